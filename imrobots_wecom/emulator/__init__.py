"""A protocol-faithful emulator of WeCom's server side, on 127.0.0.1.

It serves the intelligent robot's long connection (JSON over WebSocket, PROTOCOLS 4c),
the self-built app's HTTP routes (``gettoken``, ``message/send``, ``appchat/send``,
PROTOCOLS 4a) and pushes encrypted app callbacks to a robot's endpoint, so the official
``wecom-aibot-sdk`` (or any client) and wechatpy's crypto work against it unchanged.
See ``docs/platforms/wecom.md``.

Only asyncio, aiohttp, cryptography and (for app callbacks) wechatpy are used; the
SDK is not imported.
"""

from __future__ import annotations

from .emulator import (
    ERR_INVALID_REQ_ID,
    ERR_RATE_LIMITED,
    ERR_STREAM_EXPIRED,
    ERR_SYSTEM_BUSY,
    WeComApp,
    WeComBot,
    WeComEmulator,
)

__all__ = [
    "ERR_INVALID_REQ_ID",
    "ERR_RATE_LIMITED",
    "ERR_STREAM_EXPIRED",
    "ERR_SYSTEM_BUSY",
    "WeComApp",
    "WeComBot",
    "WeComEmulator",
]
