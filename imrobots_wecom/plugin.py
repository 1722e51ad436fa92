"""WeCom plugin registration: the platform is planned, not implemented in this version."""

from __future__ import annotations

from collections.abc import Callable

import imrobots


@imrobots.hookimpl
def register_platforms(register: Callable[[imrobots.PlatformSpec], None]) -> None:
    register(
        imrobots.PlatformSpec(
            name="wecom",
            factory="imrobots_wecom.platform:WeComPlatform",
            description="WeCom (planned)",
            status="planned",
        )
    )
