"""Run lark-oapi's own, unchanged ``ws.Client`` against a Feishu emulator.

Usage: ``python _sdk_runner.py BASE_URL APP_ID APP_SECRET``

``lark_oapi.ws.client`` creates an event loop at import and ``start()`` blocks
forever, so it runs in its own process (PROTOCOLS 3.5). Each
``im.message.receive_v1`` event is printed to stdout as one JSON line
(``{"event": "message", "message_id", "text"}``); a message whose text is ``raise``
makes the handler raise (lark-oapi then answers ``{"code": 500}``). Card actions
(``card.action.trigger``) are printed and answered with a toast.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import lark_oapi as lark  # type: ignore[import-untyped]
from lark_oapi.event.callback.model.p2_card_action_trigger import (  # type: ignore[import-untyped]
    P2CardActionTrigger,
    P2CardActionTriggerResponse,
)

BASE_URL, APP_ID, APP_SECRET = sys.argv[1:4]


def on_message(data: Any) -> None:
    message = data.event.message
    text = json.loads(message.content).get("text", "")
    print(json.dumps({"event": "message", "message_id": message.message_id, "text": text}))
    sys.stdout.flush()
    if text == "raise":
        raise RuntimeError("the handler failed on purpose")


def on_card(data: P2CardActionTrigger) -> P2CardActionTriggerResponse:
    print(json.dumps({"event": "card", "value": data.event.action.value}))
    sys.stdout.flush()
    return P2CardActionTriggerResponse({"toast": {"type": "info", "content": "pressed"}})


handler = (
    lark.EventDispatcherHandler.builder("", "")
    .register_p2_im_message_receive_v1(on_message)
    .register_p2_card_action_trigger(on_card)
    .build()
)
client = lark.ws.Client(
    APP_ID, APP_SECRET, event_handler=handler, domain=BASE_URL, log_level=lark.LogLevel.DEBUG
)
client.start()
