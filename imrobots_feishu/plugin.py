"""Feishu/Lark plugin registration: cheap, imports no SDK.

The platform passes the core conformance suite in CardKit and PATCH mode
(``tests/feishu/test_conformance.py``). ``requires`` names exactly what the running
platform imports beyond the core: ``lark_oapi`` (its typed OpenAPI client and the
long connection's protobuf frame) and ``httpx`` (whose transport errors
:mod:`imrobots_feishu.api` classifies; lark-oapi's async client is built on it);
``pip install "imrobots[feishu]"`` installs both.
"""

from __future__ import annotations

from collections.abc import Callable

import imrobots


@imrobots.hookimpl
def register_platforms(register: Callable[[imrobots.PlatformSpec], None]) -> None:
    register(
        imrobots.PlatformSpec(
            name="feishu",
            factory="imrobots_feishu.platform:FeishuPlatform",
            settings="imrobots_feishu.platform:FeishuSettings",
            description="Feishu/Lark long connection, CardKit streaming or PATCHed cards",
            requires=("lark_oapi", "httpx"),
            # Lark is Feishu's international brand (same platform, larksuite.com)
            aliases=("lark", "larksuite", "飞书"),
            install='pip install "imrobots[feishu]"',
        )
    )


@imrobots.hookimpl
def register_emulators(register: Callable[..., None]) -> None:
    register("feishu", "imrobots_feishu.console:FeishuConsoleAdapter")
