r"""Wire payloads of DingTalk stream pushes, and their conversion to core events.

The payload classes mirror DingTalk's JSON (PROTOCOLS 1.9 and 1.10) with
snake_case fields; one cattrs :class:`cattrs.Converter` (:func:`make_converter`)
maps them from camelCase and picks the content class from ``msgtype`` with a
tagged union whose default is :class:`UnknownContent`, so a new message type
becomes :attr:`imrobots.MessageKind.UNSUPPORTED` instead of a crash. The
models of :mod:`imrobots` never see DingTalk's JSON; :func:`to_message` and
:func:`to_card_action` build them from the payload classes.

Pictures, files, voice messages (with DingTalk's speech recognition in
``content.recognition``), videos and the pictures of rich text become
:class:`~imrobots.platform.Attachment`\ s that carry their ``downloadCode``; the
platform downloads them on demand. A text that quotes another message
(``text.isReplyMsg`` with ``text.repliedMsg``) gets a :class:`~imrobots.platform.Quote`.

A payload that cannot be structured raises :class:`MalformedPayload` with a
one-line message naming the bad fields. A quote that cannot be read is dropped,
never the message.
"""

from __future__ import annotations

import functools
import json
import mimetypes
import re
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, override
from cattrs.strategies import configure_tagged_union
from cattrs.v import format_exception

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
from imrobots.platform import parse_json as parse_json_text

__all__ = [
    "AtUser",
    "AudioContent",
    "BotMessage",
    "CardCallback",
    "CardCallbackContent",
    "CardPrivateData",
    "Content",
    "FileContent",
    "MalformedPayload",
    "PictureContent",
    "RichTextContent",
    "RichTextItem",
    "TextContent",
    "UnknownContent",
    "VideoContent",
    "get_converter",
    "make_converter",
    "parse_bot_message",
    "parse_card_callback",
    "parse_json",
    "quote_of",
    "strip_mentions",
    "to_card_action",
    "to_message",
]

PLATFORM = "dingtalk"
T = TypeVar("T")


class MalformedPayload(ValueError):
    """A push whose ``data`` does not have the shape DingTalk documents."""


# --------------------------------------------------------------------------- contents


@attrs.frozen(kw_only=True)
class TextContent:
    """``msgtype: text``: ``text.content`` (usually starts with a space after the @-mention)."""

    content: str = ""
    is_reply_msg: bool = False
    """The text quotes another message, in :attr:`replied_msg`."""
    replied_msg: Any = attrs.field(default=None, repr=False)
    """``text.repliedMsg``, kept as sent (``msgType``, ``msgId``, ``senderId``, ``content``);
    read by :func:`quote_of`."""


@attrs.frozen(kw_only=True)
class RichTextItem:
    """One item of a ``richText`` list: a run of text or a picture."""

    text: str | None = None
    type: str | None = None
    """``picture`` for an image item; absent for text."""
    download_code: str | None = attrs.field(default=None, repr=False)
    picture_download_code: str | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class RichTextContent:
    """``msgtype: richText``: ``content.richText`` = list of text and picture items."""

    rich_text: tuple[RichTextItem, ...] = ()


@attrs.frozen(kw_only=True)
class PictureContent:
    """``msgtype: picture``: ``content.downloadCode``."""

    download_code: str | None = attrs.field(default=None, repr=False)
    picture_download_code: str | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class AudioContent:
    """``msgtype: audio``: a voice message with DingTalk's speech recognition."""

    download_code: str | None = attrs.field(default=None, repr=False)
    duration: int | None = None
    """Milliseconds (DingTalk sends a number; the SDK keeps it as is)."""
    recognition: str | None = None


@attrs.frozen(kw_only=True)
class VideoContent:
    """``msgtype: video`` (direct chats only)."""

    download_code: str | None = attrs.field(default=None, repr=False)
    duration: int | None = None
    video_type: str | None = None


@attrs.frozen(kw_only=True)
class FileContent:
    """``msgtype: file`` (direct chats only)."""

    download_code: str | None = attrs.field(default=None, repr=False)
    file_name: str | None = None


@attrs.frozen(kw_only=True)
class UnknownContent:
    """Any other ``msgtype``: kept for :attr:`imrobots.Message.raw`, shown as unsupported."""

    msgtype: str = ""


Content = (
    TextContent
    | RichTextContent
    | PictureContent
    | AudioContent
    | VideoContent
    | FileContent
    | UnknownContent
)

_TAGS: dict[type[Any], str] = {
    TextContent: "text",
    RichTextContent: "richText",
    PictureContent: "picture",
    AudioContent: "audio",
    VideoContent: "video",
    FileContent: "file",
    UnknownContent: "__unknown__",
}

# --------------------------------------------------------------------------- envelopes


@attrs.frozen(kw_only=True)
class AtUser:
    """An entry of ``atUsers``."""

    dingtalk_id: str | None = None
    staff_id: str | None = None
    union_id: str | None = None


@attrs.frozen(kw_only=True)
class BotMessage:
    """The ``data`` of a ``/v1.0/im/bot/messages/get`` push (PROTOCOLS 1.9)."""

    msg_id: str
    msgtype: str
    conversation_id: str
    conversation_type: str
    """``"1"`` single chat, ``"2"`` group (a string on the wire)."""
    content: Content = UnknownContent()
    """From ``text`` for text messages, else from ``content``; chosen by ``msgtype``."""
    create_at: int | None = None
    """Milliseconds since the epoch."""
    conversation_title: str | None = None
    sender_id: str | None = None
    sender_staff_id: str | None = None
    sender_nick: str | None = None
    sender_corp_id: str | None = None
    sender_union_id: str | None = None
    is_admin: bool = False
    chatbot_corp_id: str | None = None
    chatbot_user_id: str | None = None
    robot_code: str | None = None
    is_in_at_list: bool | None = None
    at_users: tuple[AtUser, ...] = ()
    session_webhook: str | None = attrs.field(default=None, repr=False)
    session_webhook_expired_time: int | None = None
    err_code: int | None = None
    """Set (20001) with ``errMsg`` when the org's monthly stream quota is used up."""
    err_msg: str | None = None

    @property
    def is_group(self) -> bool:
        return self.conversation_type == "2"


@attrs.frozen(kw_only=True)
class CardPrivateData:
    """``content.cardPrivateData`` of a card callback."""

    action_ids: tuple[str, ...] = ()
    params: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class CardCallbackContent:
    """The ``content`` JSON string of a card callback, parsed."""

    card_private_data: CardPrivateData = CardPrivateData()


@attrs.frozen(kw_only=True)
class CardCallback:
    """The ``data`` of a ``/v1.0/card/instances/callback`` push (PROTOCOLS 1.10)."""

    out_track_id: str
    user_id: str
    type: str = "actionCallback"
    corp_id: str | None = None
    user_id_type: int | None = None
    space_type: str | None = None
    """``IM_GROUP`` or ``IM_ROBOT``."""
    space_id: str | None = None
    """The open conversation id (group) or the user id (robot chat)."""
    content: CardCallbackContent = CardCallbackContent()
    extension: str | None = None


# --------------------------------------------------------------------------- converter


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


_CAMEL_EXCEPTIONS = {"msgtype": "msgtype"}


MAX_TIME_MS = 32_503_680_000_000
"""The latest timestamp taken (3000-01-01, in milliseconds); later ones are malformed."""

ID_FIELDS = frozenset(
    {"msgId", "conversationId", "senderStaffId", "senderId", "outTrackId", "userId", "spaceId"}
)
"""Fields that identify (dedupe keys, conversations, cards): a lone surrogate in one is
refused, never replaced (two ids would become one)."""


def parse_json(text: str) -> Any:
    """The JSON in a push's ``data`` string, lone surrogates replaced (in ids refused, see
    :func:`imrobots.platform.load_json`). Raises :class:`MalformedPayload` for text that is
    not JSON, nested too deep for the parser, or with a lone surrogate in an id."""
    try:
        return load_json(text, ID_FIELDS)
    except MalformedJson as exc:
        raise MalformedPayload(str(exc)) from None


def _json_text(value: Any) -> Any:
    """DingTalk nests some objects as JSON strings; accept both forms."""
    if isinstance(value, str):
        try:
            return parse_json_text(value) if value.strip() else {}
        except MalformedJson:
            raise MalformedPayload("expected a JSON object inside a string") from None
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


def _lenient_bool(value: Any, _: type[Any]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int):
        return bool(value)
    raise TypeError(f"expected bool, got {type(value).__name__}")


def _lenient_str(value: Any, _: type[Any]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected str, got {type(value).__name__}")


def make_converter() -> cattrs.Converter:
    """A converter from DingTalk's camelCase push payloads to the classes of this module.

    Unknown keys are ignored (DingTalk adds fields); wrong types fail with the
    field's path. ``msgtype`` selects the content class (unknown types become
    :class:`UnknownContent`).
    """
    converter = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)
    converter.register_structure_hook(bool, _lenient_bool)
    converter.register_structure_hook(str, _lenient_str)

    def is_payload_class(cls: Any) -> bool:
        return attrs.has(cls) and getattr(cls, "__module__", None) == __name__

    def camel_hook(cls: type[Any]) -> Any:
        overrides = {
            a.name: override(rename=_CAMEL_EXCEPTIONS.get(a.name, _camel(a.name)))
            for a in attrs.fields(cls)
        }
        structure = make_dict_structure_fn(cls, converter, **overrides)  # type: ignore[arg-type]

        def hook(value: Any, type_: type[Any]) -> Any:
            if not isinstance(value, Mapping):
                raise MalformedPayload(f"expected a JSON object, got {_json_type(value)}")
            return structure(value, type_)

        return hook

    def is_sequence(type_: Any) -> bool:
        return typing.get_origin(type_) is tuple

    def sequence_hook(type_: Any) -> Any:
        item = typing.get_args(type_)[0]
        item_hook = converter.get_structure_hook(item)

        def hook(value: Any, _: type[Any]) -> tuple[Any, ...]:
            if not isinstance(value, list | tuple):
                raise MalformedPayload(f"expected a JSON array, got {_json_type(value)}")
            return tuple(item_hook(v, item) for v in value)

        return hook

    converter.register_structure_hook_factory(is_payload_class, camel_hook)
    converter.register_structure_hook_factory(is_sequence, sequence_hook)
    configure_tagged_union(
        Content,
        converter,
        tag_generator=lambda cls: _TAGS[cls],
        tag_name="msgtype",
        default=UnknownContent,
    )
    envelope = converter.get_structure_hook(BotMessage)

    def bot_message(value: Any, cls: type[BotMessage]) -> BotMessage:
        if not isinstance(value, Mapping):
            raise MalformedPayload(f"expected a JSON object, got {type(value).__name__}")
        data = dict(value)
        msgtype = data.get("msgtype")
        raw_content = data.get("text") if msgtype == "text" else data.get("content")
        raw_content = _json_text(raw_content)
        if raw_content is None:
            raw_content = {}
        if not isinstance(raw_content, Mapping):
            raise MalformedPayload(f"content: expected an object, got {type(raw_content).__name__}")
        data["content"] = {**raw_content, "msgtype": msgtype if isinstance(msgtype, str) else ""}
        data.pop("text", None)
        result: BotMessage = envelope(data, cls)
        return result

    converter.register_structure_hook(BotMessage, bot_message)
    callback_content = converter.get_structure_hook(CardCallbackContent)
    converter.register_structure_hook(
        CardCallbackContent, lambda value, cls: callback_content(_json_text(value), cls)
    )
    return converter


_converter: cattrs.Converter | None = None


def get_converter() -> cattrs.Converter:
    """The module's shared converter (made on first use)."""
    global _converter
    if _converter is None:
        _converter = make_converter()
    return _converter


def _format_error(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, MalformedPayload):
        return str(exc)
    return format_exception(exc, type_)


def _wire_path(problem: str) -> str:
    """``... @ data.msg_id`` -> ``... @ data.msgId``: name fields as DingTalk spells them."""
    text, sep, path = problem.rpartition(" @ ")
    if not sep:
        return problem
    return f"{text} @ " + re.sub(r"[a-z]+(?:_[a-z0-9]+)+", lambda m: _camel(m.group(0)), path)


def _structure(data: Any, cls: type[T]) -> T:
    try:
        return get_converter().structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        problems = [
            _wire_path(p)
            for p in cattrs.transform_error(exc, path="data", format_exception=_format_error)
        ]
        raise MalformedPayload("; ".join(problems)) from None
    except MalformedPayload:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise MalformedPayload(f"{type(exc).__name__}: {exc}") from None


def parse_bot_message(data: Any) -> BotMessage:
    """Structure a bot message's ``data``; raises :class:`MalformedPayload`."""
    if type(data) is dict:
        fast = _fast_bot_message(data)
        if fast is not None:
            return fast
    return _structure(data, BotMessage)


# --------------------------------------------------------------------------- fast path
#
# Every push goes through parse_bot_message, and cattrs with detailed validation is the
# largest part of converting it (about 13 µs a text push here; this path takes about 8).
# So a payload whose every field already has its exact type (as DingTalk sends it) is
# built directly from the attrs fields; anything else (a number for a string, a missing
# id, a wrong shape) is left to the converter, which coerces it or names the bad fields
# exactly as before.
# The result is the same object either way (tests/dingtalk/test_convert.py checks it).

_MISSING: Any = object()
_NONE = type(None)
_EXACT: dict[Any, tuple[type[Any], ...] | None] = {
    str: (str,),
    str | None: (str, _NONE),
    int | None: (int, _NONE),
    bool: (bool,),
    bool | None: (bool, _NONE),
    Any: None,  # anything goes (kept as sent)
}
_FastField = tuple[str, str, "tuple[type[Any], ...] | None", bool, "type[Any] | None"]


_fast_cache: dict[type[Any], tuple[_FastField, ...] | None] = {}


def _fast_fields(cls: type[Any]) -> tuple[_FastField, ...] | None:
    """``(name, wire name, exact types or None for any, required, item class of a
    tuple)`` per field of ``cls``, or ``None`` if a field's type has no fast form."""
    if cls in _fast_cache:
        return _fast_cache[cls]
    hints = typing.get_type_hints(cls)
    fields: list[_FastField] = []
    for field in attrs.fields(cls):
        if cls is BotMessage and field.name == "content":
            continue  # built from msgtype by _fast_bot_message
        hint = hints[field.name]
        item: type[Any] | None = None
        if typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            if _fast_fields(item) is None:
                _fast_cache[cls] = None
                return None
            exact = None
        elif hint in _EXACT:
            exact = _EXACT[hint]
        else:
            _fast_cache[cls] = None
            return None
        wire = _CAMEL_EXCEPTIONS.get(field.name, _camel(field.name))
        fields.append((field.name, wire, exact, field.default is attrs.NOTHING, item))
    found = _fast_cache[cls] = tuple(fields)
    return found


def _fast_structure(cls: type[T], value: dict[str, Any], **kwargs: Any) -> T | None:
    """``cls`` from ``value`` (and ``kwargs``) if every field present has its exact type,
    else ``None``."""
    fields = _fast_fields(cls)
    if fields is None:
        return None
    for name, wire, exact, required, item in fields:
        v = value.get(wire, _MISSING)
        if v is _MISSING:
            if required:
                return None
            continue
        if item is not None:
            if type(v) is not list:
                return None
            items = []
            for element in v:
                built = _fast_structure(item, element) if type(element) is dict else None
                if built is None:
                    return None
                items.append(built)
            v = tuple(items)
        elif exact is not None and type(v) not in exact:
            return None
        kwargs[name] = v
    return cls(**kwargs)


_COMPILED: dict[tuple[type[Any], bool], Any] = {}


def _compiled(cls: type[Any], check: bool) -> Callable[..., Any] | None:
    """What :func:`_fast_structure` does for ``cls``, as a function compiled for its fields
    (quicker than the loop: a push's envelope has 24 fields), or ``None`` for a class it
    cannot build (a field without a fast form, or a default made by a factory).

    ``check``: the function takes the payload and says whether :func:`_fast_structure`
    would build it (``True``) or return ``None``, building nothing. Else it takes the
    payload and the fields the caller gives (keywords), and returns the instance or
    ``None`` where :func:`_fast_structure` does."""
    key = (cls, check)
    if key in _COMPILED:
        found: Callable[..., Any] | None = _COMPILED[key]
        return found
    _COMPILED[key] = None
    fields = _fast_fields(cls)
    defaults = {a.name: a.default for a in attrs.fields(cls)}
    if fields is None or any(isinstance(defaults[f[0]], attrs.Factory) for f in fields):  # type: ignore[arg-type]
        return None
    fail = "return False" if check else "return None"
    names: dict[str, Any] = {"_MISSING": _MISSING, "_cls": cls}
    lines = ["def fast(value):" if check else "def fast(value, **given):", "    get = value.get"]
    arguments = []
    for index, (name, wire, exact, required, item) in enumerate(fields):
        v = f"v{index}"
        lines.append(f"    {v} = get({wire!r}, _MISSING)")
        lines.append(f"    if {v} is _MISSING:")
        if required:
            lines.append(f"        {fail}")
        elif check:
            lines.append("        pass")
        else:
            names[f"d{index}"] = defaults[name]
            lines.append(f"        {v} = d{index}")
        if item is not None:
            inner = _compiled(item, check)
            if inner is None:
                return None
            names[f"f{index}"] = inner
            lines += [f"    elif type({v}) is not list:", f"        {fail}"]
            if check:
                lines += [
                    "    else:",
                    f"        for element in {v}:",
                    f"            if type(element) is not dict or not f{index}(element):",
                    "                return False",
                ]
            else:
                lines += [
                    "    else:",
                    "        items = []",
                    f"        for element in {v}:",
                    f"            one = f{index}(element) if type(element) is dict else None",
                    "            if one is None:",
                    "                return None",
                    "            items.append(one)",
                    f"        {v} = tuple(items)",
                ]
        elif exact is not None:
            tests = []
            for i, kind in enumerate(exact):
                if kind is _NONE:
                    tests.append(f"{v} is None")
                else:
                    names[f"t{index}_{i}"] = kind
                    tests.append(f"type({v}) is t{index}_{i}")
            lines += [f"    elif not ({' or '.join(tests)}):", f"        {fail}"]
        arguments.append(f"{name}={v}")
    built = f"_cls({', '.join(arguments)}, **given)"
    lines.append("    return True" if check else f"    return {built}")
    exec(compile("\n".join(lines), f"<fast {cls.__name__}>", "exec"), names)
    function: Callable[..., Any] = names["fast"]
    _COMPILED[key] = function
    return function


_TAG_CLASSES = {tag: cls for cls, tag in _TAGS.items()}


def _fast_content(data: dict[str, Any]) -> Content | None:
    """The content of a bot message's ``data`` as :func:`_fast_structure` builds it, or
    ``None`` (the converter's case)."""
    msgtype = data.get("msgtype")
    if type(msgtype) is not str:
        return None
    raw = data.get("text") if msgtype == "text" else data.get("content")
    if raw is None:
        raw = {}
    elif type(raw) is not dict:
        return None  # a JSON string (richText) or a wrong shape: the converter's case
    content_cls = _TAG_CLASSES.get(msgtype, UnknownContent)
    if content_cls is UnknownContent:
        return UnknownContent(msgtype=msgtype)  # its one field: the tag
    build = _compiled(content_cls, False)
    if build is None:
        fast: Content | None = _fast_structure(content_cls, {**raw, "msgtype": msgtype})
        return fast
    built: Content | None = build(raw)  # (the tag is no field of theirs)
    return built


def _fast_bot_message(data: dict[str, Any]) -> BotMessage | None:
    content = _fast_content(data)
    if content is None:
        return None
    envelope = _compiled(BotMessage, False)
    if envelope is None:
        return _fast_structure(BotMessage, data, content=content)
    built: BotMessage | None = envelope(data, content=content)
    return built


def parse_card_callback(data: Any) -> CardCallback:
    """Structure a card callback's ``data``; raises :class:`MalformedPayload`."""
    return _structure(data, CardCallback)


# --------------------------------------------------------------------------- to core


def _time(create_at: int | None, field: str = "createAt") -> datetime:
    """The time of a millisecond timestamp (``None`` or 0: now); :class:`MalformedPayload`
    outside 1970..3000."""
    if create_at is None or create_at == 0:
        return datetime.now(UTC)
    if not 0 < create_at <= MAX_TIME_MS:
        raise MalformedPayload(f"{field}: {create_at} is out of range (milliseconds)")
    return datetime.fromtimestamp(create_at / 1000, tz=UTC)


_SPACELESS = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
"""Chinese and Japanese characters and punctuation: scripts written without spaces, so a
name in them may be glued to the next word."""
_SEPARATORS = r"[\s,，:：;；、]*"
"""What follows an @-name and goes with it: spaces (the four-per-em space DingTalk puts
after a mention and the full-width space too) and the punctuation people put after a name."""


@functools.lru_cache(maxsize=64)
def _mention_pattern(names: tuple[str, ...]) -> re.Pattern[str] | None:
    alternatives = []
    for name in sorted({n for n in names if n}, key=len, reverse=True):
        # A name ending in a spaceless script may be glued to the next word; any other
        # name ends where no letter or digit of its own script follows.
        glued = re.match(f"[{_SPACELESS}]", name[-1]) is not None
        end = "" if glued else f"(?![^\\W{_SPACELESS}])"
        alternatives.append(re.escape(name) + end)
    if not alternatives:
        return None
    # "@" or the full-width "＠", not inside a word ("ops@HelpBot.example" is an address).
    return re.compile(f"(?<![^\\W{_SPACELESS}])[@＠](?:{'|'.join(alternatives)}){_SEPARATORS}")


def strip_mentions(text: str, robot_names: tuple[str, ...]) -> str:
    """``text`` without the robot's own @-mentions, trimmed.

    Every ``@name`` (or ``＠name``) of ``robot_names`` goes, with the spaces and the
    punctuation (``,`` ``:`` ``、`` and their full-width forms) right after it, wherever
    it stands: glued to the question (``@HelpBot/server``), followed by a full-width
    space, repeated, or in the middle of a rich text. A longer name or an address does
    not match (``@HelpBotter``, ``ops@HelpBot.example``); a name ending in Chinese or
    Japanese may be glued to the next word (``@小助手退款``).
    """
    pattern = _mention_pattern(tuple(robot_names))
    if pattern is None:
        return text.strip()
    return pattern.sub("", text).strip()


def to_message(
    data: Mapping[str, Any] | BotMessage,
    *,
    robot_names: tuple[str, ...] = (),
) -> Message:
    """Build a core :class:`~imrobots.Message` from a bot message push.

    ``robot_names`` are display names of the robot whose ``@name`` mentions are
    removed from the text (:func:`strip_mentions`; DingTalk usually removes the first itself).
    Raises :class:`MalformedPayload` if ``data`` lacks the documented fields.
    """
    if isinstance(data, BotMessage):
        return _message_of(data, {}, robot_names)
    if type(data) is dict:
        # The fast path (every push as DingTalk sends it): the fields are read from the
        # dict once it is known that the converter would build the same BotMessage from
        # it, without building that (24 fields, frozen). The same Message either way
        # (tests/dingtalk/test_convert.py checks it).
        content = _fast_content(data)
        valid = _compiled(BotMessage, True)
        if content is not None and valid is not None and valid(data):
            get = data.get
            return _message(
                msg_id=data["msgId"],
                content=content,
                robot_code=get("robotCode"),
                group=get("conversationType") == "2",
                robot_id=get("chatbotUserId"),
                at_users=[
                    (user.get("dingtalkId"), user.get("staffId"), user.get("unionId"))
                    for user in get("atUsers", ())
                ],
                conversation_id=data["conversationId"],
                conversation_title=get("conversationTitle"),
                sender_id=get("senderStaffId") or get("senderId") or "",
                sender_nick=get("senderNick"),
                is_admin=get("isAdmin", False),
                is_in_at_list=get("isInAtList"),
                create_at=get("createAt"),
                raw=data,
                robot_names=robot_names,
            )
    return _message_of(parse_bot_message(data), data, robot_names)


def _message_of(bot: BotMessage, raw: Mapping[str, Any], robot_names: tuple[str, ...]) -> Message:
    return _message(
        msg_id=bot.msg_id,
        content=bot.content,
        robot_code=bot.robot_code,
        group=bot.is_group,
        robot_id=bot.chatbot_user_id,
        at_users=[(user.dingtalk_id, user.staff_id, user.union_id) for user in bot.at_users],
        conversation_id=bot.conversation_id,
        conversation_title=bot.conversation_title,
        sender_id=bot.sender_staff_id or bot.sender_id or "",
        sender_nick=bot.sender_nick,
        is_admin=bot.is_admin,
        is_in_at_list=bot.is_in_at_list,
        create_at=bot.create_at,
        raw=raw,
        robot_names=robot_names,
    )


def _message(
    *,
    msg_id: str,
    content: Content,
    robot_code: str | None,
    group: bool,
    robot_id: str | None,
    at_users: list[tuple[str | None, str | None, str | None]],
    conversation_id: str,
    conversation_title: str | None,
    sender_id: str,
    sender_nick: str | None,
    is_admin: bool,
    is_in_at_list: bool | None,
    create_at: int | None,
    raw: Mapping[str, Any],
    robot_names: tuple[str, ...],
) -> Message:
    """The Message of a bot message's fields (``at_users``: ``(dingtalkId, staffId,
    unionId)`` of each)."""
    if not msg_id:
        # the dedupe key: two messages without one would be taken for one
        raise MalformedPayload("data.msgId: empty")
    attachments: list[Attachment] = []
    quote: Quote | None = None
    if isinstance(content, TextContent):  # most pushes
        kind, text = MessageKind.TEXT, content.content
        if content.is_reply_msg or content.replied_msg is not None:
            quote = quote_of(content.replied_msg)
    else:
        kind, text = _media(content, msg_id, robot_code, attachments)
    # the users @-mentioned, but the robot itself
    mentions = [
        Sender(id=staff_id or dingtalk_id or union_id or "")
        for dingtalk_id, staff_id, union_id in at_users
        if (robot_id is None or dingtalk_id != robot_id) and (staff_id or dingtalk_id)
    ]
    return Message(
        id=msg_id,
        platform=PLATFORM,
        text=strip_mentions(text, robot_names),
        conversation=Conversation(
            id=conversation_id,
            kind=ConversationKind.GROUP if group else ConversationKind.DIRECT,
            title=conversation_title,
        ),
        sender=Sender(id=sender_id, name=sender_nick, is_admin=is_admin),
        kind=kind,
        mentioned=bool(is_in_at_list) if group else True,
        mentions=tuple(mentions),
        attachments=tuple(attachments),
        time=_time(create_at),
        raw=raw,
        quote=quote,
        app=robot_code,
    )


def _media(
    content: Content, msg_id: str, robot_code: str | None, attachments: list[Attachment]
) -> tuple[MessageKind, str]:
    """The kind and text of a message that is not plain text; its attachments are
    appended to ``attachments``."""
    kind = MessageKind.UNSUPPORTED
    text = ""
    extra = {"msgId": msg_id, "robotCode": robot_code} if robot_code else {}
    if isinstance(content, RichTextContent):
        kind = MessageKind.RICH_TEXT
        parts: list[str] = []
        for item in content.rich_text:
            if item.text is not None and item.type in (None, "text"):
                parts.append(item.text)
            code = item.download_code or item.picture_download_code
            if item.type == "picture" or (item.text is None and code):
                attachments.append(_attachment("image", code, extra=extra))
        text = "".join(parts)
    elif isinstance(content, PictureContent):
        kind = MessageKind.IMAGE
        code = content.download_code or content.picture_download_code
        attachments.append(_attachment("image", code, extra=extra))
    elif isinstance(content, AudioContent):
        kind, text = MessageKind.AUDIO, content.recognition or ""
        attachments.append(
            _attachment(
                "audio",
                content.download_code,
                text=content.recognition,
                duration=content.duration,
                extra=extra,
            )
        )
    elif isinstance(content, VideoContent):
        kind = MessageKind.VIDEO
        attachments.append(
            _attachment(
                "video",
                content.download_code,
                duration=content.duration,
                mime_type=f"video/{content.video_type}" if content.video_type else None,
                extra=extra,
            )
        )
    elif isinstance(content, FileContent):
        kind = MessageKind.FILE
        attachments.append(
            _attachment("file", content.download_code, name=content.file_name, extra=extra)
        )
    return kind, text


def _attachment(
    kind: str,
    download_code: str | None,
    *,
    name: str | None = None,
    text: str | None = None,
    duration: int | float | None = None,
    mime_type: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Attachment:
    if mime_type is None and name:
        mime_type = mimetypes.guess_type(name)[0]
    return Attachment(
        kind=kind,
        name=name,
        download_code=download_code,
        text=text,
        # DingTalk sends milliseconds (e.g. 4000 for a 4-second voice message)
        duration=duration / 1000 if isinstance(duration, int | float) else None,
        mime_type=mime_type,
        extra=dict(extra or {}),
    )


def _json_object(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_json_text(value)
        except MalformedJson:
            return value
    return value


def _card_texts(node: Any, out: list[str], depth: int = 0) -> None:
    """The visible text of a quoted interactive card's element tree
    (``{elementType, value, children}``; QwenLM/qwen-code#9536)."""
    if depth > 20:
        return
    if isinstance(node, list):
        for child in node:
            _card_texts(child, out, depth + 1)
    elif isinstance(node, Mapping):
        value = node.get("value")
        if str(node.get("elementType", "")).upper() == "TEXT" and isinstance(value, str):
            out.append(value)
        _card_texts(node.get("children"), out, depth + 1)


def quote_of(replied: Any) -> Quote | None:
    """The :class:`~imrobots.platform.Quote` of a text's ``repliedMsg``, or ``None``.

    Reads the shapes DingTalk clients send, as community plugins found them
    (soimy/openclaw-channel-dingtalk#128, QwenLM/qwen-code#9536; DingTalk documents
    none): text in ``content.text`` or ``content.content``, rich text as segments
    (``{"msgType": "text", "content"}`` / ``{"text"}`` and pictures with a
    ``downloadCode``), pictures, files, voice (``recognition``), videos, markdown,
    and interactive cards (the text elements of ``content.cardContent``).
    """
    replied = _json_object(replied)
    if not isinstance(replied, Mapping):
        return None
    msg_type = str(replied.get("msgType") or replied.get("msgtype") or "text")
    content = _json_object(replied.get("content"))
    texts: list[str] = []
    attachments: list[Attachment] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, Mapping):
        code = content.get("downloadCode") or content.get("pictureDownloadCode")
        code = code if isinstance(code, str) else None
        if msg_type in ("text", "markdown"):
            value = content.get("text", content.get("content"))
            if isinstance(value, str):
                texts.append(value)
        elif msg_type == "richText":
            items = content.get("richText")
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, Mapping):
                    continue
                item_type = item.get("msgType") or item.get("type") or "text"
                item_code = item.get("downloadCode") or item.get("pictureDownloadCode")
                if item_type == "picture":
                    attachments.append(
                        _attachment("image", item_code if isinstance(item_code, str) else None)
                    )
                else:
                    value = item.get("text", item.get("content"))
                    if isinstance(value, str):
                        texts.append(value)
        elif msg_type == "picture":
            attachments.append(_attachment("image", code))
        elif msg_type in ("audio", "voice"):
            recognition = content.get("recognition")
            recognition = recognition if isinstance(recognition, str) else None
            if recognition:
                texts.append(recognition)
            attachments.append(_attachment("audio", code, text=recognition))
        elif msg_type == "video":
            attachments.append(_attachment("video", code))
        elif msg_type == "file":
            name = content.get("fileName")
            attachments.append(
                _attachment("file", code, name=name if isinstance(name, str) else None)
            )
        elif msg_type == "interactiveCard":
            _card_texts(content.get("cardContent"), texts)
    sender_id = replied.get("senderId")
    msg_id = replied.get("msgId")
    return Quote(
        id=msg_id if isinstance(msg_id, str) else None,
        text="".join(texts).strip() if msg_type == "richText" else "\n".join(texts).strip(),
        sender=Sender(id=sender_id) if isinstance(sender_id, str) and sender_id else None,
        attachments=tuple(attachments),
    )


def callback_value(params: Mapping[str, Any]) -> str:
    """The value a button sent: ``params["value"]``, else the params as JSON."""
    value = params.get("value")
    if isinstance(value, str):
        return value
    if len(params) == 1:
        (only,) = params.values()
        if isinstance(only, str):
            return only
    return json.dumps(dict(params), ensure_ascii=False, sort_keys=True)


def to_card_action(
    data: Mapping[str, Any] | CardCallback,
    *,
    callback_id: str,
    time_ms: int | None = None,
) -> CardAction:
    """Build a core :class:`~imrobots.CardAction` from a card callback push.

    ``callback_id`` is the frame's ``messageId`` (the same on a redelivery, so the
    core drops duplicates); the value is the button's ``value`` param.
    """
    raw: Mapping[str, Any]
    if isinstance(data, CardCallback):
        callback, raw = data, {}
    else:
        callback, raw = parse_card_callback(data), data
    private = callback.content.card_private_data
    conversation: Conversation | None = None
    if callback.space_id:
        kind = (
            ConversationKind.GROUP if callback.space_type == "IM_GROUP" else ConversationKind.DIRECT
        )
        conversation = Conversation(id=callback.space_id, kind=kind)
    return CardAction(
        id=callback_id,
        platform=PLATFORM,
        card_id=callback.out_track_id,
        action_id=private.action_ids[0] if private.action_ids else "",
        value=callback_value(private.params),
        sender=Sender(id=callback.user_id),
        conversation=conversation,
        time=_time(time_ms, "the time header"),
        raw=raw,
    )
