"""WeCom plugin registration. The platform itself is not implemented yet."""

from __future__ import annotations

from collections.abc import Callable

import imrobots


@imrobots.hookimpl
def register_platforms(register: Callable[[imrobots.PlatformSpec], None]) -> None:
    register(
        imrobots.PlatformSpec(
            name="wecom",
            factory="imrobots_wecom.platform:WeComPlatform",
            description="WeCom intelligent robot (wechatpy) - not implemented yet",
            requires=("wechatpy",),
            install='pip install "imrobots[wecom]"',
        )
    )
