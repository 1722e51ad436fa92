"""Feishu/Lark plugin registration. The platform itself is not implemented yet."""

from __future__ import annotations

from collections.abc import Callable

import imrobots


@imrobots.hookimpl
def register_platforms(register: Callable[[imrobots.PlatformSpec], None]) -> None:
    register(
        imrobots.PlatformSpec(
            name="feishu",
            factory="imrobots_feishu.platform:FeishuPlatform",
            description="Feishu/Lark long connection (lark-oapi) - not implemented yet",
            requires=("lark_oapi",),
            install='pip install "imrobots[feishu]"',
        )
    )
