"""WeCom platform plugin for imrobots: the intelligent robot's long connection (stream
replies) or a self-built app's callbacks (wechatpy crypto), and a WeCom emulator.

``imrobots`` finds it through the ``imrobots`` entry point (``plugin.py``), which
imports nothing heavy. The platform lives in :mod:`imrobots_wecom.platform`;
``WeComPlatform`` and ``WeComSettings`` are also importable from here (lazily).
See ``docs/platforms/wecom.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WeComPlatform", "WeComSettings"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import platform

        return getattr(platform, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
