"""Feishu/Lark plugin registration: cheap, imports no SDK.

The platform stays ``planned`` until it passes the core conformance suite in every
mode (see ``tests/feishu/test_conformance.py``); then it gets its description,
``requires=("lark_oapi",)`` and install command, and its emulator is registered for the
console and ``imrobots demo`` only then (they refuse planned platforms)."""

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
            description="Feishu/Lark (planned)",
            status="planned",
        )
    )
