"""Feishu event payloads -> core events.

:func:`to_message` reads an ``im.message.receive_v1`` envelope (PROTOCOLS 3.6) and
:func:`to_card_action` a ``card.action.trigger`` one (PROTOCOLS 3.7); both take the
decoded JSON and never see lark-oapi's models, so the same code serves the long
connection and the HTTP callback mode.

- Mentions: ``@_user_N`` keys in the text become ``@name``; the robot's own mention
  (its open_id, fetched at start from ``bot/v3/info``; without it, a mention whose
  ``user_id`` is empty, as Feishu sends for bots, UNCONFIRMED) is removed and sets
  ``mentioned``; other users go to ``Message.mentions``. ``@_all`` is kept as text.
- Types: ``text``; ``post`` (rich text: its text, ``md``, links and mentions as text,
  its images as attachments) is ``RICH_TEXT``; ``image``, ``file``, ``audio``,
  ``media`` (video) carry an :class:`~imrobots.platform.Attachment` whose ``id`` is the
  ``image_key``/``file_key`` and whose ``extra`` has the message id and resource type
  the download API needs; anything else is ``UNSUPPORTED``.
- A reply (``parent_id``) gets a :class:`~imrobots.platform.Quote` with the parent's
  id; the platform fills in its text before delivering (it needs an API call).

A payload that cannot be read raises :class:`MalformedPayload` naming the bad field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from imrobots.platform import (
    Attachment,
    CardAction,
    Conversation,
    ConversationKind,
    MalformedJson,
    Message,
    MessageKind,
    Quote,
    Sender,
    load_json,
)

__all__ = [
    "CARD_ACTION_EVENT",
    "MESSAGE_EVENT",
    "MalformedPayload",
    "button_value",
    "content_text",
    "to_card_action",
    "to_message",
]

PLATFORM = "feishu"
MESSAGE_EVENT = "im.message.receive_v1"
CARD_ACTION_EVENT = "card.action.trigger"
_MENTION_KEY = re.compile(r"@_user_\d+")


ID_FIELDS = frozenset(
    {
        "event_id",
        "message_id",
        "root_id",
        "parent_id",
        "thread_id",
        "chat_id",
        "open_id",
        "user_id",
        "union_id",
        "open_message_id",
        "open_chat_id",
    }
)
"""Fields that identify: a lone surrogate in one makes the event malformed (see
:func:`imrobots.platform.load_json`)."""


class MalformedPayload(ValueError):
    """An event payload without the fields a core event needs."""


def _dict(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedPayload(f"{where} is not an object")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedPayload(f"{where} is missing")
    return value


def _time(ms: Any, scale: int = 1000) -> datetime:
    try:
        return datetime.fromtimestamp(int(ms) / scale, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _open_id(ids: Any) -> str:
    if isinstance(ids, Mapping):
        for key in ("open_id", "user_id", "union_id"):
            value = ids.get(key)
            if isinstance(value, str) and value:
                return value
    return ""


def _is_robot(mention: Mapping[str, Any], bot_open_id: str | None) -> bool:
    ids = mention.get("id")
    open_id = ids.get("open_id") if isinstance(ids, Mapping) else None
    if bot_open_id:
        return open_id == bot_open_id
    user_id = ids.get("user_id") if isinstance(ids, Mapping) else None
    return not user_id  # bots have no user_id (UNCONFIRMED; see the module docstring)


def _post_body(content: Mapping[str, Any]) -> Mapping[str, Any]:
    """A post's body: received posts are ``{"title", "content"}``; sent ones are keyed by
    locale."""
    if "content" in content:
        return content
    for value in content.values():
        if isinstance(value, Mapping) and "content" in value:
            return value
    return {}


def content_text(
    message_type: str, content: Mapping[str, Any], names: Mapping[str, str]
) -> tuple[str, list[tuple[str, str]]]:
    """The text of a message's ``content`` and its images (``("image", key)``) for posts;
    ``names`` maps mention keys (``@_user_1``) to what replaces them."""
    images: list[tuple[str, str]] = []
    if message_type == "text":
        return str(content.get("text") or ""), images
    if message_type != "post":
        return "", images
    body = _post_body(content)
    lines: list[str] = []
    title = body.get("title")
    if isinstance(title, str) and title:
        lines.append(title)
    for paragraph in body.get("content") or ():
        parts: list[str] = []
        for item in paragraph if isinstance(paragraph, list) else ():
            if not isinstance(item, Mapping):
                continue
            tag = item.get("tag")
            if tag in ("text", "md"):
                parts.append(str(item.get("text") or ""))
            elif tag == "a":
                parts.append(f"[{item.get('text') or ''}]({item.get('href') or ''})")
            elif tag == "at":
                key = str(item.get("user_id") or "")
                parts.append(names.get(key, f"@{item.get('user_name') or key}"))
            elif tag == "img" and item.get("image_key"):
                images.append(("image", str(item["image_key"])))
            elif tag == "code_block":
                parts.append(f"```\n{item.get('text') or ''}\n```")
        lines.append("".join(parts))
    return "\n".join(lines), images


def to_message(envelope: Mapping[str, Any], *, bot_open_id: str | None) -> Message:
    """Build a core :class:`~imrobots.platform.Message` from ``im.message.receive_v1``."""
    header = _dict(envelope.get("header"), "header")
    event = _dict(envelope.get("event"), "event")
    message = _dict(event.get("message"), "event.message")
    sender = _dict(event.get("sender"), "event.sender")
    message_id = _str(message.get("message_id"), "event.message.message_id")
    chat_id = _str(message.get("chat_id"), "event.message.chat_id")
    message_type = str(message.get("message_type") or "")
    try:
        content = load_json(str(message.get("content") or "{}"), where="event.message.content")
    except MalformedJson as exc:
        raise MalformedPayload(str(exc)) from None
    if not isinstance(content, Mapping):
        raise MalformedPayload("event.message.content is not an object")
    group = message.get("chat_type") != "p2p"

    mentioned = not group
    names: dict[str, str] = {}
    others: list[Sender] = []
    for mention in message.get("mentions") or ():
        if not isinstance(mention, Mapping):
            continue
        key = str(mention.get("key") or "")
        name = str(mention.get("name") or "")
        if _is_robot(mention, bot_open_id):
            names[key] = ""
            mentioned = True
        else:
            names[key] = f"@{name}" if name else key
            others.append(Sender(id=_open_id(mention.get("id")) or key, name=name or None))

    text, images = content_text(message_type, content, names)
    if message_type == "text":
        text = _MENTION_KEY.sub(lambda m: names.get(m.group(0), m.group(0)), text)
    text = re.sub(r"[ \t]{2,}", " ", text).strip()

    attachments: list[Attachment] = []
    kind = MessageKind.TEXT
    if message_type == "post":
        kind = MessageKind.RICH_TEXT
        for _, key in images:
            attachments.append(_attachment("image", key, message_id, "image"))
    elif message_type == "image":
        kind = MessageKind.IMAGE
        attachments.append(
            _attachment("image", str(content.get("image_key") or ""), message_id, "image")
        )
    elif message_type in ("file", "audio", "media"):
        kind = {"file": MessageKind.FILE, "audio": MessageKind.AUDIO, "media": MessageKind.VIDEO}[
            message_type
        ]
        duration = content.get("duration")
        attachments.append(
            _attachment(
                {"file": "file", "audio": "audio", "media": "video"}[message_type],
                str(content.get("file_key") or ""),
                message_id,
                "file",
                name=content.get("file_name"),
                duration=duration / 1000 if isinstance(duration, int | float) else None,
            )
        )
    elif message_type != "text":
        kind = MessageKind.UNSUPPORTED

    parent = message.get("parent_id")
    quote = Quote(id=parent) if isinstance(parent, str) and parent else None
    sender_id = _open_id(sender.get("sender_id"))
    if not sender_id:
        raise MalformedPayload("event.sender.sender_id has no open_id")
    thread = message.get("thread_id")
    return Message(
        id=message_id,
        platform=PLATFORM,
        text=text,
        conversation=Conversation(
            id=chat_id, kind=ConversationKind.GROUP if group else ConversationKind.DIRECT
        ),
        sender=Sender(id=sender_id),
        kind=kind,
        mentioned=mentioned,
        mentions=tuple(others),
        attachments=tuple(a for a in attachments if a.id),
        time=_time(message.get("create_time")),
        raw=dict(envelope),
        quote=quote,
        thread=thread if isinstance(thread, str) and thread else None,
        app=str(header.get("app_id") or "") or None,
    )


def _attachment(
    kind: str,
    key: str,
    message_id: str,
    resource_type: str,
    *,
    name: Any = None,
    duration: float | None = None,
) -> Attachment:
    return Attachment(
        kind=kind,
        id=key,
        name=name if isinstance(name, str) and name else None,
        duration=duration,
        extra={"message_id": message_id, "type": resource_type},
    )


def button_value(value: Any) -> tuple[str, str, str | None]:
    """``(value, button id, card entity id)`` of a pressed button's callback value (as
    :mod:`.cards` writes it); a foreign value is passed through as JSON text."""
    if isinstance(value, Mapping) and isinstance(value.get("v"), str):
        entity = value.get("c")
        return value["v"], str(value.get("b") or ""), entity if isinstance(entity, str) else None
    if isinstance(value, str):
        return value, "", None
    return json.dumps(value, ensure_ascii=False, sort_keys=True), "", None


def to_card_action(envelope: Mapping[str, Any]) -> CardAction:
    """Build a core :class:`~imrobots.platform.CardAction` from ``card.action.trigger``.

    Its ``id`` is the event id (the same on a redelivery, so the core drops
    duplicates) and its ``card_id`` the message the card is in."""
    header = _dict(envelope.get("header"), "header")
    event = _dict(envelope.get("event"), "event")
    action = _dict(event.get("action"), "event.action")
    context = _dict(event.get("context"), "event.context")
    operator = _dict(event.get("operator"), "event.operator")
    message_id = _str(context.get("open_message_id"), "event.context.open_message_id")
    value, button_id, _ = button_value(action.get("value"))
    chat = context.get("open_chat_id")
    user = _open_id(operator)
    if not user:
        raise MalformedPayload("event.operator has no open_id")
    return CardAction(
        id=_str(header.get("event_id"), "header.event_id"),
        platform=PLATFORM,
        card_id=message_id,
        action_id=button_id or str(action.get("name") or action.get("tag") or ""),
        value=value,
        sender=Sender(id=user),
        conversation=Conversation(id=chat, kind=ConversationKind.GROUP)
        if isinstance(chat, str) and chat
        else None,
        time=_time(header.get("create_time"), 1_000_000),
        raw=dict(envelope),
        app=str(header.get("app_id") or "") or None,
    )
