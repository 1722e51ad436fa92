"""Stream frames and payloads built the way DingTalk builds them.

Frame shape (PROTOCOLS 1.3): ``specVersion`` "1.0", ``type`` SYSTEM | EVENT |
CALLBACK, ``headers`` of strings (``time`` is epoch milliseconds *as a string*),
``data`` a JSON-encoded *string*. Bot message fields follow PROTOCOLS 1.9, card
callbacks PROTOCOLS 1.10.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from typing import Any

from .state import ConversationType, EmulatedApp

SPEC_VERSION = "1.0"
TOPIC_BOT_MESSAGE = "/v1.0/im/bot/messages/get"
TOPIC_CARD_CALLBACK = "/v1.0/card/instances/callback"
# GUESS: the ``topic`` header of EVENT frames (the subscription topic is ``*``).
TOPIC_EVENT = "*"
TOPIC_PING = "ping"
TOPIC_DISCONNECT = "disconnect"
CONTENT_TYPE = "application/json"


def now_ms() -> int:
    return int(time.time() * 1000)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()


# --- identifiers --------------------------------------------------------------


def new_uuid(rng: random.Random) -> str:
    """A version-4 UUID from ``rng``'s next 128 bits: ``str(uuid.UUID(int=bits,
    version=4))``, written without the UUID object (one per OpenAPI answer)."""
    bits = rng.getrandbits(128) & _NOT_VERSION | _VERSION_4
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NOT_VERSION = ~(0xC000 << 48) & ~(0xF000 << 64)
_VERSION_4 = (0x8000 << 48) | (4 << 76)


def new_request_id(rng: random.Random) -> str:
    """Like ``30EE8654-1AA2-7D88-8248-9518547248AA``."""
    return new_uuid(rng).upper()


def new_hex(rng: random.Random, nbytes: int = 16) -> str:
    return f"{rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def new_message_id(rng: random.Random) -> str:
    """Frame ``messageId`` like ``213d841d_972_1898bb26334_70a7``."""
    return f"{rng.getrandbits(32):08x}_{rng.randrange(1000)}_{now_ms():x}_{rng.getrandbits(16):04x}"


def new_msg_id(rng: random.Random) -> str:
    """Bot message ``msgId`` like ``msgAMVBzPulTJGBbGXvR5v4sQ==``."""
    return "msg" + _b64(rng.getrandbits(128).to_bytes(16, "big"))


def lwcp_id(*parts: str) -> str:
    """Encrypted user id like ``$:LWCP_v1:$e0Rhhrf+yDZksBH2knMNnLwLYZgwKRr6``."""
    return "$:LWCP_v1:$" + _b64(_digest("lwcp", *parts)[:24])


def conversation_id(app: EmulatedApp, kind: ConversationType, key: str) -> str:
    """Stable ``cid...=`` conversation id (the single chat of a user or a group)."""
    return "cid" + _b64(_digest("cid", app.corp_id, kind, key))


def corp_id(client_id: str) -> str:
    return "ding" + _digest("corp", client_id).hex()[:32]


# --- frames -------------------------------------------------------------------


def build_frame(
    frame_type: str,
    topic: str,
    message_id: str,
    data: dict[str, Any],
    *,
    app_id: str | None = None,
    connection_id: str | None = None,
    time_ms: int | None = None,
    extra_headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A server-to-client frame. CALLBACK frames carry ``appId`` and ``connectionId``;
    EVENT frames add ``eventType``, ``eventId``, ``eventCorpId``, ``eventBornTime``,
    ``eventUnifiedAppId`` (``extra_headers``)."""
    headers: dict[str, str] = {}
    if app_id is not None:
        headers["appId"] = app_id
    if connection_id is not None:
        headers["connectionId"] = connection_id
    headers["contentType"] = CONTENT_TYPE
    headers["messageId"] = message_id
    headers["time"] = str(time_ms if time_ms is not None else now_ms())
    headers["topic"] = topic
    headers.update(extra_headers or {})
    return {
        "specVersion": SPEC_VERSION,
        "type": frame_type,
        "headers": headers,
        "data": json.dumps(data, ensure_ascii=False),
    }


def build_bot_message(
    app: EmulatedApp,
    *,
    msg_id: str,
    conversation_type: ConversationType,
    conversation_id: str,
    conversation_title: str | None,
    sender_staff_id: str,
    sender_nick: str,
    at_robot: bool,
    msgtype: str,
    text: str,
    content: dict[str, Any] | None,
    create_at_ms: int,
    session_webhook: str,
    session_webhook_expired_ms: int,
    replied_msg: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``data`` of a ``/v1.0/im/bot/messages/get`` push (PROTOCOLS 1.9).

    ``replied_msg``: the message a text quotes, as ``text.repliedMsg`` with
    ``text.isReplyMsg: true`` (the shape community plugins parse, e.g.
    soimy/openclaw-channel-dingtalk#128; GUESS: not in DingTalk's documentation)."""
    data: dict[str, Any] = {
        "conversationId": conversation_id,
        "chatbotCorpId": app.corp_id,
        "chatbotUserId": app.chatbot_user_id,
        "msgId": msg_id,
        "senderNick": sender_nick,
        "isAdmin": False,
        "senderStaffId": sender_staff_id,
        "sessionWebhookExpiredTime": session_webhook_expired_ms,
        "createAt": create_at_ms,
        "senderCorpId": app.corp_id,
        "conversationType": "2" if conversation_type == "group" else "1",
        # an unpublished robot's pushes carry senderStaffId "" (PROTOCOLS 1.9)
        "senderId": lwcp_id(app.corp_id, sender_staff_id or sender_nick),
        "sessionWebhook": session_webhook,
        "robotCode": app.robot_code,
        "msgtype": msgtype,
    }
    if conversation_type == "group":
        data["conversationTitle"] = conversation_title or "Emulated group"
        data["isInAtList"] = at_robot
        data["atUsers"] = [{"dingtalkId": app.chatbot_user_id}] if at_robot else []
    if msgtype == "text":
        body = text
        if conversation_type == "group" and at_robot and body and not body[0].isspace():
            # GUESS: DingTalk strips "@Robot" and "usually" keeps the space after it.
            body = " " + body
        data["text"] = {"content": body}
        if replied_msg is not None:
            data["text"]["isReplyMsg"] = True
            data["text"]["repliedMsg"] = dict(replied_msg)
    else:
        data["content"] = dict(content or {})
    return data


def build_card_callback(
    app: EmulatedApp,
    *,
    card_id: str,
    action_id: str,
    params: dict[str, Any],
    user_id: str,
    space_type: str,
    space_id: str,
) -> dict[str, Any]:
    """The ``data`` of a ``/v1.0/card/instances/callback`` push (PROTOCOLS 1.10)."""
    content = {"cardPrivateData": {"actionIds": [action_id], "params": dict(params)}}
    # GUESS: "extension" and "userIdType" values; the field list is documented.
    return {
        "extension": "{}",
        "corpId": app.corp_id,
        "type": "actionCallback",
        "userId": user_id,
        "userIdType": 1,
        "spaceType": space_type,
        "spaceId": space_id,
        "outTrackId": card_id,
        "content": json.dumps(content, ensure_ascii=False),
    }


def new_b64(rng: random.Random, nbytes: int = 24) -> str:
    """Opaque base64 id, e.g. a ``processQueryKey`` or ``carrierId``."""
    return _b64(rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big"))
