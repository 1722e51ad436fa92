"""WeCom payloads -> core events.

- Robot mode (PROTOCOLS 4b/4c): the JSON ``body`` of ``aibot_msg_callback``: ``msgid``,
  ``aibotid``, ``chatid`` (groups), ``chattype`` (``single``|``group``), ``from.userid``,
  ``msgtype`` text|image|mixed|voice|file|video with its part, and ``quote``. Images and
  files carry ``url`` and a per-message ``aeskey``: they become
  :class:`~imrobots.platform.Attachment`\\ s whose ``extra`` keeps the key, downloaded and
  decrypted by the platform. A voice message carries WeCom's speech recognition in
  ``voice.content``: it is the message text and the audio attachment's ``text``.
  In groups WeCom keeps the ``@robot`` prefix in the text; it is stripped (the robot's
  names from the settings, else a leading ``@word``: a group message only reaches the
  robot when it was @-mentioned). Unknown message types become
  :attr:`MessageKind.UNSUPPORTED`, never a crash.
- ``template_card_event`` (``aibot_event_callback``) -> :class:`CardAction` whose
  ``card_id`` is the card's ``task_id`` and ``value`` the pressed button's ``key``.
- ``enter_chat`` (``aibot_event_callback``) -> :class:`ChatEntered` in the user's
  one-to-one chat.
- App mode (PROTOCOLS 4a): the decrypted XML (``ToUserName``, ``FromUserName``,
  ``CreateTime``, ``MsgType``, ``Content``, ``MsgId``, ``AgentID``) -> a direct
  :class:`Message` (app callbacks are one-to-one). Images, voice, video and files carry a
  ``MediaId``: attachments downloaded with ``media/get`` (``extra["media_id"]``). A
  ``template_card_event`` -> :class:`CardAction` (``TaskId``, ``EventKey``,
  ``ResponseCode``).

``Message.raw`` (and so ``Target.context``) carries ``req_id`` and the connection
``generation`` the push came on, so replies go back on the right ``req_id``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from imrobots.platform import (
    Attachment,
    CardAction,
    ChatEntered,
    Conversation,
    ConversationKind,
    Message,
    MessageKind,
    Quote,
    Sender,
)

__all__ = [
    "MalformedPayload",
    "parse_xml",
    "to_app_card_action",
    "to_app_message",
    "to_card_action",
    "to_chat_entered",
    "to_message",
]

PLATFORM = "wecom"
_LEADING_AT = re.compile(r"^\s*@\S+\s*")


class MalformedPayload(ValueError):
    """A payload that lacks what every message has (id, sender)."""


MAX_TIME = 32_503_680_000
"""The latest ``create_time`` taken (3000-01-01, in seconds); a later one is malformed."""


def _time(body: Mapping[str, Any]) -> datetime:
    created = body.get("create_time")
    if isinstance(created, bool) or not isinstance(created, int | float) or created == 0:
        return datetime.now(UTC)
    if not 0 < created <= MAX_TIME:
        raise MalformedPayload(f"create_time {created} is out of range (seconds)")
    return datetime.fromtimestamp(float(created), UTC)


def _attachment(kind: str, part: Any, *, name: str | None = None) -> Attachment | None:
    if not isinstance(part, Mapping) or not part.get("url"):
        return None
    return Attachment(
        kind=kind,
        url=str(part["url"]),
        name=name or (str(part["filename"]) if part.get("filename") else None),
        extra={"aeskey": str(part.get("aeskey") or "")},
    )


def strip_mention(text: str, names: tuple[str, ...]) -> str:
    """``text`` without the leading ``@robot`` of a group message: the longest of
    ``names`` that the text starts with as a whole word (``@Support`` is not the start of
    ``@Supporter``, nor ``@Help`` of ``@HelpDesk``; a name ending in another script, such
    as Chinese, may be glued to the question), else, without names (blank ones ignored),
    any leading ``@word``."""
    stripped = text.lstrip()
    real = sorted({name for name in names if name.strip()}, key=len, reverse=True)
    for name in real:
        tag = f"@{name}"
        if stripped.startswith(tag) and not _goes_on(name, stripped[len(tag) :]):
            return stripped[len(tag) :].strip()
    if real:
        return stripped.strip()
    return _LEADING_AT.sub("", stripped, count=1).strip()


def _goes_on(name: str, rest: str) -> bool:
    """Whether ``rest`` continues the ASCII word ``name`` ends in (``er`` after
    ``@Support`` in ``@Supporter``)."""
    last, first = name[-1], rest[:1]
    return bool(first) and _word_char(last) and _word_char(first)


def _word_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "_")


def _content(body: Mapping[str, Any]) -> tuple[MessageKind, str, list[Attachment]]:
    msgtype = str(body.get("msgtype") or "")
    part = body.get(msgtype)
    if msgtype == "text" and isinstance(part, Mapping):
        return MessageKind.TEXT, str(part.get("content") or ""), []
    if msgtype == "image":
        found = _attachment("image", part)
        return MessageKind.IMAGE, "", [found] if found else []
    if msgtype == "file":
        found = _attachment("file", part)
        return MessageKind.FILE, "", [found] if found else []
    if msgtype == "video":
        found = _attachment("video", part)
        return MessageKind.VIDEO, "", [found] if found else []
    if msgtype == "voice" and isinstance(part, Mapping):
        text = str(part.get("content") or "")
        voice = Attachment(
            kind="audio", text=text, url=str(part["url"]) if part.get("url") else None
        )
        return MessageKind.AUDIO, text, [voice]
    if msgtype == "mixed" and isinstance(part, Mapping):
        texts: list[str] = []
        attachments: list[Attachment] = []
        for item in part.get("msg_item") or ():
            if not isinstance(item, Mapping):
                continue
            kind = item.get("msgtype")
            if kind == "text" and isinstance(item.get("text"), Mapping):
                texts.append(str(item["text"].get("content") or ""))
            elif kind in ("image", "file"):
                found = _attachment(kind, item.get(kind))
                if found:
                    attachments.append(found)
        return MessageKind.RICH_TEXT, "\n".join(t for t in texts if t), attachments
    return MessageKind.UNSUPPORTED, "", []


def _quote(body: Mapping[str, Any]) -> Quote | None:
    quote = body.get("quote")
    if not isinstance(quote, Mapping):
        return None
    try:
        _, text, attachments = _content(quote)
    except Exception:
        return None
    return Quote(
        id=str(quote["msgid"]) if quote.get("msgid") else None,
        text=text,
        attachments=tuple(attachments),
    )


def _where(body: Mapping[str, Any]) -> tuple[Conversation, Sender]:
    sender = body.get("from")
    user = str(sender.get("userid") or "") if isinstance(sender, Mapping) else ""
    if not user:
        raise MalformedPayload("from.userid missing")
    if body.get("chattype") == "group":
        chatid = str(body.get("chatid") or "")
        if not chatid:
            raise MalformedPayload("chatid missing in a group message")
        return Conversation(id=chatid, kind=ConversationKind.GROUP), Sender(id=user)
    return Conversation(id=user, kind=ConversationKind.DIRECT), Sender(id=user)


def to_message(
    body: Mapping[str, Any],
    *,
    req_id: str,
    generation: int,
    robot_names: tuple[str, ...] = (),
) -> Message:
    """The core message of an ``aibot_msg_callback`` body."""
    msgid = str(body.get("msgid") or "")
    if not msgid:
        raise MalformedPayload("msgid missing")
    conversation, sender = _where(body)
    kind, text, attachments = _content(body)
    if conversation.is_group:
        text = strip_mention(text, robot_names)
    return Message(
        id=msgid,
        platform=PLATFORM,
        text=text.strip(),
        conversation=conversation,
        sender=sender,
        kind=kind,
        mentioned=True,
        attachments=tuple(attachments),
        time=_time(body),
        raw={"req_id": req_id, "generation": generation, "mode": "robot", "body": dict(body)},
        quote=_quote(body),
        app=str(body.get("aibotid") or "") or None,
    )


def to_card_action(
    body: Mapping[str, Any], *, req_id: str, generation: int, button_ids: Mapping[str, str]
) -> CardAction:
    """The core action of a ``template_card_event`` body."""
    event = body.get("event")
    detail = event.get("template_card_event") if isinstance(event, Mapping) else None
    if not isinstance(detail, Mapping):
        raise MalformedPayload("event.template_card_event missing")
    conversation, sender = _where(body)
    key = str(detail.get("event_key") or "")
    task_id = str(detail.get("task_id") or "")
    return CardAction(
        id=str(body.get("msgid") or req_id),
        platform=PLATFORM,
        card_id=task_id,
        action_id=button_ids.get(key, key),
        value=key,
        sender=sender,
        conversation=conversation,
        time=_time(body),
        raw={"req_id": req_id, "generation": generation, "mode": "robot", "body": dict(body)},
        app=str(body.get("aibotid") or "") or None,
    )


def to_chat_entered(body: Mapping[str, Any], *, req_id: str, generation: int) -> ChatEntered:
    """The core event of an ``enter_chat`` body: a user opened the robot's one-to-one chat
    (WeCom sends it on the first entry of the day). ``raw`` carries the ``req_id`` a
    welcome reply (``aibot_respond_welcome_msg``, within 5 s) goes out on."""
    conversation, sender = _where(body)
    return ChatEntered(
        id=str(body.get("msgid") or req_id),
        platform=PLATFORM,
        sender=sender,
        conversation=conversation,
        time=_time(body),
        raw={
            "req_id": req_id,
            "generation": generation,
            "mode": "robot",
            "event": "enter_chat",
            "body": dict(body),
        },
        app=str(body.get("aibotid") or "") or None,
    )


def parse_xml(xml: str) -> dict[str, str]:
    """The fields of a decrypted app callback (flat XML)."""
    root = ET.fromstring(xml)
    return {child.tag: (child.text or "") for child in root}


def to_app_card_action(fields: Mapping[str, str], *, button_ids: Mapping[str, str]) -> CardAction:
    """The core action of an app-mode ``template_card_event`` (WeCom doc path/90240):
    ``FromUserName``, ``EventKey`` (the pressed button's ``key``), ``TaskId`` (the card),
    ``CardType`` and ``ResponseCode`` (what ``update_template_card`` takes, once, for 72
    hours). Its id is the ``ResponseCode`` (one per press), so a retried callback is
    the same action."""
    user = fields.get("FromUserName", "")
    task_id = fields.get("TaskId", "")
    if not user or not task_id:
        raise MalformedPayload("FromUserName or TaskId missing in a template_card_event")
    key = fields.get("EventKey", "")
    created = fields.get("CreateTime", "")
    when = datetime.fromtimestamp(int(created), UTC) if created.isdigit() else datetime.now(UTC)
    return CardAction(
        id=fields.get("ResponseCode") or f"{user}-{created}-{task_id}-{key}",
        platform=PLATFORM,
        card_id=task_id,
        action_id=button_ids.get(key, key),
        value=key,
        sender=Sender(id=user),
        conversation=Conversation(id=user, kind=ConversationKind.DIRECT),
        time=when,
        raw={"mode": "app", **dict(fields)},
        app=fields.get("AgentID") or None,
    )


def to_app_message(fields: Mapping[str, str]) -> Message:
    """The core message of an app-mode callback's fields (PROTOCOLS 4a)."""
    user = fields.get("FromUserName", "")
    if not user:
        raise MalformedPayload("FromUserName missing")
    msgtype = fields.get("MsgType", "")
    msg_id = fields.get("MsgId") or f"{user}-{fields.get('CreateTime', '')}"
    kind, text = MessageKind.UNSUPPORTED, ""
    attachments: list[Attachment] = []
    media_id = fields.get("MediaId") or None
    extra = {"media_id": media_id} if media_id else {}
    if msgtype == "text":
        kind, text = MessageKind.TEXT, fields.get("Content", "")
    elif msgtype == "voice":
        text = fields.get("Recognition", "")
        kind = MessageKind.AUDIO
        attachments.append(
            Attachment(kind="audio", id=media_id, text=text or None, extra=dict(extra))
        )
    elif msgtype == "image":
        kind = MessageKind.IMAGE
        attachments.append(
            Attachment(kind="image", id=media_id, url=fields.get("PicUrl"), extra=dict(extra))
        )
    elif msgtype == "video":
        kind = MessageKind.VIDEO
        attachments.append(Attachment(kind="video", id=media_id, extra=dict(extra)))
    elif msgtype == "file":
        # UNCONFIRMED: path/90239 lists no file message for apps; read as a media message.
        kind = MessageKind.FILE
        name = fields.get("FileName") or fields.get("Title") or None
        attachments.append(Attachment(kind="file", id=media_id, name=name, extra=dict(extra)))
    created = fields.get("CreateTime", "")
    when = datetime.fromtimestamp(int(created), UTC) if created.isdigit() else datetime.now(UTC)
    return Message(
        id=msg_id,
        platform=PLATFORM,
        text=text.strip(),
        conversation=Conversation(id=user, kind=ConversationKind.DIRECT),
        sender=Sender(id=user),
        kind=kind,
        mentioned=True,
        attachments=tuple(attachments),
        time=when,
        raw={"mode": "app", **dict(fields)},
        app=fields.get("AgentID") or None,
    )
