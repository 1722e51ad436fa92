"""Feishu/Lark plugin registration: the platform is planned, not implemented in this version."""

from __future__ import annotations

from collections.abc import Callable

import imrobots


@imrobots.hookimpl
def register_platforms(register: Callable[[imrobots.PlatformSpec], None]) -> None:
    register(
        imrobots.PlatformSpec(
            name="feishu",
            factory="imrobots_feishu.platform:FeishuPlatform",
            description="Feishu/Lark (planned)",
            status="planned",
        )
    )
