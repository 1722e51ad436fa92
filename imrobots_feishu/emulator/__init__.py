"""A protocol-faithful emulator of Feishu's (Lark's) server side, on 127.0.0.1.

It serves the long connection (endpoint discovery and the protobuf WebSocket), the
HTTP event callback mode, and the OpenAPI routes robots call (tenant tokens,
messages, replies, card PATCH, message resources, uploads, CardKit), with their
documented limits and error codes, so lark-oapi's own clients run against it
unchanged. See ``docs/platforms/feishu.md``.

Only asyncio and aiohttp are used (and pycryptodome for encrypted callbacks); the
SDK is not imported.
"""

from __future__ import annotations

from .emulator import FeishuEmulator
from .errors import ApiError

__all__ = ["ApiError", "FeishuEmulator"]
