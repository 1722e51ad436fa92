"""Core :class:`~imrobots.Card` -> Feishu card JSON (schema 2.0).

One rendering serves both answer modes (PROTOCOLS 3.8): a CardKit card entity
(``POST /cardkit/v1/cards`` with ``type: card_json``) and a message card that is
PATCHed (``msg_type: interactive``). The card is:

- ``config``: ``update_multi: true`` (required for PATCH and for entities),
  ``streaming_mode`` while an answer streams (with the ``streaming_config`` print
  settings and a summary), off otherwise;
- ``header``: the title (cut to :data:`TITLE_CHARS`) and one ``text_tag`` naming the
  answer's state (Thinking, Answering, Done, Error, Interrupted), which is how a
  reader (and the console) tells a card's state;
- ``body.elements``: markdown elements (the first answer markdown has the fixed
  ``element_id`` :data:`CONTENT_ELEMENT`, the one CardKit streaming updates), notes as
  small markdown, dividers as ``hr``, and buttons whose ``callback`` behaviour carries
  ``{"v": value, "b": button id}`` (plus ``"c"``: the card entity id, when there is one).

Tables: Feishu refuses cards with too many tables (230099/11310, ANCHORS 5); with
``tables=False`` markdown tables become code blocks (:func:`degrade_tables`).
"""

from __future__ import annotations

import re
from typing import Any

from imrobots.platform import Actions, Card, CardStatus, Divider, Markdown, Note, dump_json

__all__ = [
    "CONTENT_ELEMENT",
    "STATUS_TAGS",
    "TITLE_CHARS",
    "card_json",
    "card_markdown",
    "degrade_tables",
    "dumps",
]

CONTENT_ELEMENT = "answer_content"
"""The ``element_id`` of the markdown that CardKit streaming updates."""
TITLE_CHARS = 120
"""Characters of the title kept (the question can be long; the card must stay < 30 KB)."""

STATUS_TAGS: dict[CardStatus, tuple[str, str]] = {
    CardStatus.THINKING: ("Thinking", "blue"),
    CardStatus.STREAMING: ("Answering", "blue"),
    CardStatus.FINAL: ("Done", "green"),
    CardStatus.ERROR: ("Error", "red"),
    CardStatus.INTERRUPTED: ("Interrupted", "orange"),
}
_BUTTON_TYPES = {"primary": "primary_filled", "danger": "danger", "default": "default"}
_TABLE = re.compile(
    r"(?m)^(\|[^\n]*\|[ \t]*\n)(\|[ \t:\-|]+\|[ \t]*\n)((?:\|[^\n]*\|[ \t]*(?:\n|$))*)"
)


def degrade_tables(markdown: str) -> str:
    """Markdown tables turned into fenced code blocks (drawn as text, not as tables)."""

    def fence(match: re.Match[str]) -> str:
        return "```\n" + match.group(0).rstrip("\n") + "\n```\n"

    return _TABLE.sub(fence, markdown)


def _title(text: str | None) -> str:
    text = (text or "").strip().replace("\n", " ")
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"


def card_markdown(card: Card) -> str:
    """The answer text of ``card``: its markdown elements joined."""
    return card.markdown


def card_json(
    card: Card,
    *,
    streaming: bool = False,
    entity_id: str | None = None,
    tables: bool = True,
    print_frequency_ms: int = 70,
) -> dict[str, Any]:
    """The schema 2.0 JSON of ``card``. See the module docstring."""
    label, color = STATUS_TAGS.get(card.status, STATUS_TAGS[CardStatus.FINAL])
    elements: list[dict[str, Any]] = []
    content_done = False
    for element in card.elements:
        if isinstance(element, Markdown):
            text = element.text if tables else degrade_tables(element.text)
            item: dict[str, Any] = {"tag": "markdown", "content": text or " "}
            if not content_done:
                item["element_id"] = CONTENT_ELEMENT
                content_done = True
            elements.append(item)
        elif isinstance(element, Note):
            elements.append({"tag": "markdown", "content": element.text, "text_size": "notation"})
        elif isinstance(element, Divider):
            elements.append({"tag": "hr"})
        elif isinstance(element, Actions):
            for button in element.buttons:
                value: dict[str, Any] = {"v": button.value, "b": button.id}
                if entity_id is not None:
                    value["c"] = entity_id
                elements.append(
                    {
                        "tag": "button",
                        "element_id": _element_id(button.id),
                        "text": {"tag": "plain_text", "content": button.label},
                        "type": _BUTTON_TYPES.get(button.style, "default"),
                        "behaviors": [{"type": "callback", "value": value}],
                    }
                )
    if not content_done and streaming:
        elements.insert(0, {"tag": "markdown", "content": " ", "element_id": CONTENT_ELEMENT})
    config: dict[str, Any] = {"update_multi": True, "streaming_mode": streaming}
    if streaming:
        config["streaming_config"] = {
            "print_frequency_ms": {"default": print_frequency_ms},
            "print_step": {"default": 1},
            "print_strategy": "fast",
        }
        config["summary"] = {"content": _title(card.title) or label}
    return {
        "schema": "2.0",
        "config": config,
        "header": {
            "title": {"tag": "plain_text", "content": _title(card.title) or label},
            "text_tag_list": [
                {"tag": "text_tag", "text": {"tag": "plain_text", "content": label}, "color": color}
            ],
        },
        "body": {"elements": elements},
    }


def _element_id(button_id: str) -> str:
    """Element ids are at most 20 characters of letters, digits and underscores, starting
    with a letter (UNCONFIRMED: the exact rule of the card JSON 2.0 reference)."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", button_id)
    return ("b" + clean[-19:]) if clean else "b"


def dumps(card: dict[str, Any]) -> str:
    """The card's compact JSON (see :func:`imrobots.platform.dump_json`)."""
    return dump_json(card).decode()
