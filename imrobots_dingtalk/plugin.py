"""DingTalk plugin registration: cheap, imports no SDK."""

from __future__ import annotations

from collections.abc import Callable

import imrobots


@imrobots.hookimpl
def register_platforms(register: Callable[[imrobots.PlatformSpec], None]) -> None:
    register(
        imrobots.PlatformSpec(
            name="dingtalk",
            factory="imrobots_dingtalk.platform:DingTalkPlatform",
            settings="imrobots_dingtalk.platform:DingTalkSettings",
            description="DingTalk stream mode (dingtalk-stream)",
            requires=("dingtalk_stream",),
            install='pip install "imrobots[dingtalk]"',
        )
    )


@imrobots.hookimpl
def register_emulators(register: Callable[..., None]) -> None:
    register("dingtalk", "imrobots_dingtalk.console:DingTalkConsoleAdapter")
