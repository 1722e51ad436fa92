"""Placeholder: the Feishu platform is not implemented yet."""

from __future__ import annotations

from typing import NoReturn

import imrobots


def FeishuPlatform(settings: object) -> NoReturn:
    raise imrobots.PlatformUnavailable("the feishu platform is not implemented yet in this version")
