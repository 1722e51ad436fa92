"""WeCom plugin registration: cheap, imports no SDK.

The platform stays ``planned`` until it passes the core conformance suite in both
modes (``tests/wecom/test_conformance.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import imrobots


@imrobots.hookimpl
def register_platforms(register: Callable[[imrobots.PlatformSpec], None]) -> None:
    register(
        imrobots.PlatformSpec(
            name="wecom",
            factory="imrobots_wecom.platform:WeComPlatform",
            settings="imrobots_wecom.platform:WeComSettings",
            description="WeCom intelligent robot (long connection) or self-built app (planned)",
            status="planned",
        )
    )


@imrobots.hookimpl
def register_emulators(register: Callable[..., None]) -> None:
    register("wecom", "imrobots_wecom.console:WeComConsoleAdapter")
