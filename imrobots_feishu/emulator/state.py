"""Emulator state: plain records of apps, chats, messages, card entities and calls.

Nothing here speaks HTTP or WebSocket; :mod:`.server` and :mod:`.emulator` do.
:func:`render_card` reads a card's JSON (schema 2.0, or the older top-level
``elements``) the way a Feishu client draws it: title, tags, markdown, buttons.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

__all__ = [
    "ApiCall",
    "App",
    "CardEntity",
    "MessageRecord",
    "RenderedCard",
    "Resource",
    "Window",
    "iter_elements",
    "render_card",
]


@attrs.define(kw_only=True)
class App:
    """One self-built app: its credentials and its bot."""

    app_id: str
    app_secret: str = attrs.field(repr=False)
    verification_token: str = attrs.field(repr=False)
    encrypt_key: str | None = attrs.field(default=None, repr=False)
    bot_open_id: str = ""
    bot_name: str = "Robot"
    tenant_key: str = "emulator-tenant"
    callback_url: str | None = None
    """Where events are POSTed in HTTP callback mode; ``None``: the long connection."""


@attrs.define(kw_only=True)
class MessageRecord:
    """A message in a chat, from a user or from the app."""

    message_id: str
    app_id: str
    chat_id: str
    chat_type: str
    """``p2p`` or ``group``."""
    sender_id: str
    from_app: bool
    msg_type: str
    content: dict[str, Any]
    parent_id: str | None = None
    root_id: str | None = None
    thread_id: str | None = None
    uuid: str | None = None
    card_id: str | None = None
    """The card entity it was sent from (CardKit), if any."""
    receivers: list[str] = attrs.field(factory=list)
    withdrawn: bool = False
    created: float = attrs.field(factory=time.time)
    updated: float = attrs.field(factory=time.time)
    updates: int = 0
    statuses: list[str] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class CardEntity:
    """A CardKit card entity (PROTOCOLS 3.8)."""

    card_id: str
    app_id: str
    data: dict[str, Any]
    sequence: int = 0
    streaming_since: float | None = None
    """``time.monotonic()`` when streaming mode was last enabled; ``None`` when off."""
    timed_out: bool = False
    message_id: str | None = None
    uuids: set[str] = attrs.field(factory=set)
    content_updates: int = 0

    @property
    def streaming(self) -> bool:
        return self.streaming_since is not None


@attrs.define(kw_only=True)
class Resource:
    """Bytes behind an ``image_key`` or ``file_key``."""

    key: str
    kind: str
    data: bytes = attrs.field(repr=False)
    name: str | None = None
    message_id: str | None = None


@attrs.define(kw_only=True)
class ApiCall:
    """One OpenAPI request the emulator answered."""

    method: str
    path: str
    status: int
    code: int
    wall: float
    latency: float
    rate_limited: bool = False


class Window:
    """Sliding-window counters: at most ``limit`` events per ``seconds`` per key."""

    def __init__(self) -> None:
        self._events: dict[str, collections.deque[float]] = {}

    def hit(self, key: str, limit: int, seconds: float, now: float) -> float | None:
        """Count an event; return ``None`` if allowed, else the seconds until it would be."""
        events = self._events.setdefault(key, collections.deque())
        while events and events[0] <= now - seconds:
            events.popleft()
        if len(events) >= limit:
            return events[0] + seconds - now
        events.append(now)
        return None


@attrs.frozen(kw_only=True)
class RenderedCard:
    """What a Feishu client shows of a card."""

    title: str | None
    tags: tuple[str, ...]
    blocks: tuple[dict[str, Any], ...]
    """Neutral blocks: markdown, note, divider, buttons (``{"id", "label", "style",
    "value"}``)."""
    streaming: bool = False


def iter_elements(elements: Any) -> Iterator[dict[str, Any]]:
    """Every element of a card body, depth first (columns, forms and collapsible panels
    opened)."""
    if not isinstance(elements, list):
        return
    for element in elements:
        if not isinstance(element, dict):
            continue
        yield element
        for key in ("elements", "columns", "actions"):
            yield from iter_elements(element.get(key))


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return str(value or "")


def _body(card: Mapping[str, Any]) -> list[Any]:
    body = card.get("body")
    if isinstance(body, dict) and isinstance(body.get("elements"), list):
        return list(body["elements"])
    elements = card.get("elements")
    return list(elements) if isinstance(elements, list) else []


_STYLES = {"primary": "primary", "primary_filled": "primary", "danger": "danger"}


def render_card(card: Mapping[str, Any]) -> RenderedCard:
    """Read a card JSON into a :class:`RenderedCard`."""
    header = card.get("header") if isinstance(card.get("header"), dict) else {}
    assert isinstance(header, dict)
    title = _text(header.get("title")) or None
    tags = tuple(
        _text(tag.get("text")) for tag in header.get("text_tag_list") or () if isinstance(tag, dict)
    )
    blocks: list[dict[str, Any]] = []
    buttons: list[dict[str, Any]] = []

    def flush() -> None:
        if buttons:
            blocks.append({"type": "buttons", "buttons": list(buttons)})
            buttons.clear()

    for element in iter_elements(_body(card)):
        tag = element.get("tag")
        if tag == "button":
            value: Any = None
            for behavior in element.get("behaviors") or ():
                if isinstance(behavior, dict) and behavior.get("type") == "callback":
                    value = behavior.get("value")
            if value is None:
                value = element.get("value")
            buttons.append(
                {
                    "id": str(element.get("element_id") or element.get("name") or ""),
                    "label": _text(element.get("text")),
                    "style": _STYLES.get(str(element.get("type")), "default"),
                    "value": value,
                }
            )
            continue
        flush()
        if tag == "markdown":
            size = element.get("text_size")
            kind = "note" if size in ("notation", "small") else "markdown"
            blocks.append({"type": kind, "text": str(element.get("content") or "")})
        elif tag == "div":
            blocks.append({"type": "markdown", "text": _text(element.get("text"))})
        elif tag == "hr":
            blocks.append({"type": "divider"})
        elif tag == "note":
            texts = [_text(e) for e in element.get("elements") or () if isinstance(e, dict)]
            blocks.append({"type": "note", "text": " ".join(texts)})
    flush()
    config = card.get("config") if isinstance(card.get("config"), dict) else {}
    streaming = bool(isinstance(config, dict) and config.get("streaming_mode"))
    return RenderedCard(title=title, tags=tags, blocks=tuple(blocks), streaming=streaming)
