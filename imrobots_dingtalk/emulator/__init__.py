"""A protocol-faithful emulator of DingTalk's server side, on 127.0.0.1.

It serves the Stream gateway and WebSocket, the OpenAPI routes robots call,
per-message sessionWebhooks and a JSON control API, so the official
``dingtalk_stream`` SDK (or any client) runs against it unchanged. See
``docs/platforms/dingtalk-emulator.md``.

Only asyncio and aiohttp are used; the SDK is not imported.
"""

from __future__ import annotations

from .emulator import DingTalkEmulator, Stall
from .errors import ApiError
from .state import (
    AckRecord,
    ApiCall,
    CardRecord,
    CardUpdate,
    ConnectionRecord,
    EmulatedApp,
    EmulatorState,
    PushedCallback,
    PushedEvent,
    PushedMessage,
    SentMessage,
    WebhookMessage,
    to_json,
)
from .thread import EmulatorThread

__all__ = [
    "AckRecord",
    "ApiCall",
    "ApiError",
    "CardRecord",
    "CardUpdate",
    "ConnectionRecord",
    "DingTalkEmulator",
    "EmulatedApp",
    "EmulatorState",
    "EmulatorThread",
    "PushedCallback",
    "PushedEvent",
    "PushedMessage",
    "SentMessage",
    "Stall",
    "WebhookMessage",
    "to_json",
]
