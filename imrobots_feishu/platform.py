"""Placeholder: the Feishu platform is planned, not implemented in this version.

The plugin registers it with ``status="planned"``, so the core refuses it before
ever calling this factory.
"""

from __future__ import annotations

from typing import NoReturn

import imrobots


def FeishuPlatform(settings: object) -> NoReturn:
    raise imrobots.PlatformUnavailable(
        "platform 'feishu' is planned, not available in this version"
    )
