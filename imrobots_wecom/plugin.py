"""WeCom plugin registration: cheap, imports no SDK.

The platform passes the core conformance suite in both modes
(``tests/wecom/test_conformance.py``). ``requires`` names exactly what the running code
imports beyond the core: ``cryptography`` (media keys) and ``wechatpy`` (app-mode
callback crypto); ``pip install "imrobots[wecom]"`` installs both.
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
            description="WeCom intelligent robot (long connection) or self-built app (wechatpy)",
            requires=("cryptography", "wechatpy"),
            # WeCom's former English name (WeChat Work), its Chinese name and their short forms
            aliases=(
                "wework",
                "wxwork",
                "wechatwork",
                "workwechat",
                "weixin",
                "qiyeweixin",
                "企业微信",
            ),
            install='pip install "imrobots[wecom]"',
        )
    )


@imrobots.hookimpl
def register_emulators(register: Callable[..., None]) -> None:
    register("wecom", "imrobots_wecom.console:WeComConsoleAdapter")
