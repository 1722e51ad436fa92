"""Core :class:`~imrobots.Card` -> DingTalk card JSON.

Two renderings, one per ``card_mode``:

- :func:`standard_card`: the ``cardData`` of a legacy ``StandardCard`` (the
  seed's card, PROTOCOLS 2.3): ``config``, ``header.title`` and ``contents`` of
  ``markdown``, ``divider`` and ``action`` blocks; buttons are ``actionType:
  "request"`` and carry ``value``. Every block, button and label has its own id.
- :func:`ai_card_params`: the ``cardParamMap`` of an AI card instance
  (PROTOCOLS 2.4/2.5), string values only, in one of two layouts. On DingTalk's
  built-in AI card template (the default, the SDK's ``AIMarkdownCardInstance``):
  ``msgTitle``, ``flowStatus`` (the SDK's ``AICardStatus``: 1 processing,
  2 inputing, 3 finished, 5 failed), the markdown (``msgContent``) and
  ``sys_full_json_obj`` with the buttons as ``msgButtons``. On a template of one's
  own: ``title``, ``flowStatus``, the markdown under the configured content key, and
  ``buttons``, a JSON list of ``{"id", "label", "value", "style"}``, which the
  template must bind. The DingTalk emulator draws both
  (``imrobots_dingtalk/emulator/render.py``).
"""

from __future__ import annotations

from typing import Any

from imrobots.platform import (
    Actions,
    Button,
    Card,
    CardStatus,
    Divider,
    Markdown,
    Note,
    dump_json,
)

__all__ = [
    "FLOW_STATUS",
    "STOP_REASON_KEY",
    "ai_button_list",
    "ai_card_params",
    "ai_markdown",
    "sdk_button_list",
    "standard_card",
    "stream_flags",
]

FLOW_STATUS: dict[CardStatus, str] = {
    CardStatus.THINKING: "1",
    CardStatus.STREAMING: "2",
    CardStatus.FINAL: "3",
    CardStatus.INTERRUPTED: "5",
    CardStatus.ERROR: "5",
}
"""``flowStatus`` of each lifecycle state (values of the SDK's ``AICardStatus``). An
interrupted answer did not finish: DingTalk shows it failed (with the text it had and
the note saying it was interrupted), never finished."""

STOP_REASON_KEY = "stopReason"
"""The card param that says why a failed AI card stopped: ``interrupted`` (the robot
stopped or crashed mid-answer) or ``error`` (the agent failed). DingTalk shows both as
failed; a template may show the reason, and the console tells them apart by it."""

_STOP_REASONS = {CardStatus.INTERRUPTED: "interrupted", CardStatus.ERROR: "error"}


def stream_flags(status: CardStatus) -> tuple[bool, bool]:
    """``(isFinalize, isError)`` of the ``card/streaming`` call that closes a card in
    ``status``: a final card is finalized (DingTalk: finished); an error or interrupted
    card ends with ``isError`` (DingTalk: failed); a card still open neither."""
    if status is CardStatus.FINAL:
        return True, False
    if status in _STOP_REASONS:
        return False, True
    return False, False


_BUTTON_STATUS = {"primary": "primary", "danger": "warning", "default": "normal"}
"""Core button style -> StandardCard button ``status``. GUESS: the value names."""


def _standard_button(button: Button) -> dict[str, Any]:
    return {
        "type": "button",
        "label": {"type": "text", "text": button.label, "id": f"{button.id}_label"},
        "actionType": "request",
        "status": _BUTTON_STATUS.get(button.style, "normal"),
        "id": button.id,
        "value": button.value,
    }


def standard_card(card: Card) -> dict[str, Any]:
    """The StandardCard ``cardData`` (a dict; the API wants it as a JSON string)."""
    contents: list[dict[str, Any]] = []
    for element in card.elements:
        if isinstance(element, Markdown | Note):
            contents.append({"type": "markdown", "text": element.text, "id": element.id})
        elif isinstance(element, Divider):
            contents.append({"type": "divider", "id": element.id})
        elif isinstance(element, Actions):
            contents.append(
                {
                    "type": "action",
                    "actions": [_standard_button(b) for b in element.buttons],
                    "id": element.id,
                }
            )
    data: dict[str, Any] = {"config": {"autoLayout": True, "enableForward": True}}
    if card.title:
        data["header"] = {"title": {"type": "text", "text": card.title}}
    data["contents"] = contents
    return data


def ai_markdown(card: Card) -> str:
    """The markdown an AI card streams: markdown blocks, then notes, as paragraphs."""
    parts = [e.text for e in card.elements if isinstance(e, Markdown | Note) and e.text]
    return "\n\n".join(parts)


def ai_button_list(card: Card) -> list[dict[str, str]]:
    """The card's buttons as the emulator's convention lists them."""
    return [
        {"id": b.id, "label": b.label, "value": b.value, "style": b.style} for b in card.buttons
    ]


_SDK_COLORS = {"primary": "blue", "danger": "red", "default": "gray"}
"""Core button style -> ``color`` of a button of the built-in template (the SDK's
examples use ``blue`` and ``gray``)."""
SDK_ORDER = ("msgTitle", "msgContent", "msgButtons")
"""What the built-in template shows, in order (its ``sys_full_json_obj.order``)."""


def sdk_button_list(card: Card) -> list[dict[str, Any]]:
    """The card's buttons as the built-in template's ``msgButtons``: ``request`` buttons
    (a press calls back over Stream, as the SDK's own select button does) carrying the
    button's ``value`` as the callback param ``value``."""
    return [
        {
            "text": b.label,
            "color": _SDK_COLORS.get(b.style, "gray"),
            "id": b.id,
            "request": True,
            "params": {"value": b.value},
        }
        for b in card.buttons
    ]


def ai_card_params(
    card: Card, *, content_key: str, content: bool = True, builtin: bool = False
) -> dict[str, str]:
    """The ``cardParamMap`` of an AI card showing ``card`` (every value a string).

    ``content=False`` leaves the markdown out (it goes through the streaming API).
    ``builtin=True``: the variables of DingTalk's built-in AI card template (the SDK's
    ``AIMarkdownCardInstance``): ``msgTitle``, ``flowStatus``, the markdown, and
    ``sys_full_json_obj`` (JSON: ``order`` and ``msgButtons``, see
    :func:`sdk_button_list`). Otherwise the plugin's own convention for a template of
    one's own: ``title``, ``flowStatus``, the markdown and ``buttons``.
    """
    params: dict[str, str]
    if builtin:
        full: dict[str, Any] = {"order": list(SDK_ORDER)}
        buttons = sdk_button_list(card)
        if buttons:
            full["msgButtons"] = buttons
        params = {
            "msgTitle": card.title or "",
            "flowStatus": FLOW_STATUS[card.status],
            "sys_full_json_obj": dump_json(full).decode(),
        }
    else:
        params = {
            "title": card.title or "",
            "flowStatus": FLOW_STATUS[card.status],
            "buttons": dump_json(ai_button_list(card)).decode(),
        }
    reason = _STOP_REASONS.get(card.status)
    if reason is not None:
        params[STOP_REASON_KEY] = reason
    if content:
        params[content_key] = ai_markdown(card)
    return params
