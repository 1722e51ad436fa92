"""DingTalk plugin registration: cheap, imports no SDK (nor does the platform it registers)."""

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
            description="DingTalk stream mode",
            seed_config=True,  # the seed tutorial's config.json is a DingTalk robot's
            # The platform speaks the Stream protocol and the OpenAPI itself (asyncio and
            # aiohttp): it imports no SDK. Only imrobots_dingtalk.sdk.RobotHandler, for apps
            # that keep their own dingtalk-stream client, imports dingtalk_stream; the
            # "dingtalk" extra installs it.
            requires=(),
            # what users also call it: its Chinese name and its romanisation
            aliases=("dingding", "钉钉"),
            install='pip install "imrobots[dingtalk]"',
        )
    )


@imrobots.hookimpl
def register_emulators(register: Callable[..., None]) -> None:
    register("dingtalk", "imrobots_dingtalk.console:DingTalkConsoleAdapter")
