"""Placeholder: the WeCom platform is not implemented yet."""

from __future__ import annotations

from typing import NoReturn

import imrobots


def WeComPlatform(settings: object) -> NoReturn:
    raise imrobots.PlatformUnavailable("the wecom platform is not implemented yet in this version")
