"""DingTalk platform plugin for imrobots: Stream mode in, StandardCard or AI card out.

``imrobots`` finds it through the ``imrobots`` entry point (``plugin.py``), which
imports nothing heavy. The platform itself lives in :mod:`imrobots_dingtalk.platform`;
``DingTalkPlatform`` and ``DingTalkSettings`` are also importable from here (lazily).
See ``docs/platforms/dingtalk.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .platform import DingTalkPlatform, DingTalkSettings

__all__ = ["DingTalkPlatform", "DingTalkSettings"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import platform

        return getattr(platform, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
