"""What a chat client would show for a card: the console's rendering convention.

Card instances (AI cards) are template-driven; the emulator cannot know a
template, so it reads a few conventional ``cardParamMap`` keys:

- markdown body: the key last written by ``PUT /v1.0/card/streaming``, else the
  first of ``markdown``, ``msgContent``, ``content``, ``text``;
- title: ``title``, else ``msgTitle`` (the SDK's AI markdown card);
- status: ``flowStatus`` (1 processing, 2 inputing, 3 finished, 4 executing,
  5 failed; the SDK's ``AICardStatus``), overridden by streaming
  ``isFinalize``/``isError``;
- buttons: ``buttons`` holding a JSON list of ``{"id", "label", "value"}``, else
  ``msgButtons`` inside the SDK's ``sys_full_json_obj`` JSON
  (``{"text", "url", "id"?, "color"?}``, or a ``request`` button carrying
  ``params.value``).

StandardCards are read from their ``cardData``: ``header.title.text``, the text
of ``text``/``markdown`` contents, and ``action`` contents' buttons. Every other
key is stored in :attr:`CardRecord.content` untouched.
"""

from __future__ import annotations

from typing import Any

from imrobots.platform import load_json

from .state import CardRecord

FLOW_STATUS = {
    "1": "processing",
    "2": "inputing",
    "3": "finished",
    "4": "executing",
    "5": "failed",
}
MARKDOWN_KEYS = ("markdown", "msgContent", "content", "text")
_COLOR_STYLES = {"blue": "primary", "red": "danger"}
"""``color`` of a built-in template button -> the console's button style."""
TITLE_KEYS = ("title", "msgTitle")


def _loads(value: Any) -> Any:
    """The JSON in a card parameter (``buttons``, ``sys_full_json_obj``), for display:
    each lone surrogate replaced by U+FFFD (the console cannot show one); ``None`` if the
    value is not JSON."""
    if not isinstance(value, str):
        return None
    try:
        return load_json(value)
    except ValueError:
        return None


def _button(item: Any) -> dict[str, str] | None:
    if not isinstance(item, dict):
        return None
    label = item.get("label", item.get("text"))
    if isinstance(label, dict):  # StandardCard: {"type": "text", "text": "..."}
        label = label.get("text")
    if not isinstance(label, str):
        return None
    ident = item.get("id", label)
    params = item.get("params")
    value = item.get("value")
    if value is None and isinstance(params, dict):
        value = params.get("value")  # a request button of the built-in template
    if value is None:
        value = item.get("url", ident)
    style = item.get("style") or _COLOR_STYLES.get(str(item.get("color")), "default")
    return {
        "id": str(ident),
        "label": label,
        "value": str(value),
        "style": str(style),
    }


def _buttons(items: Any) -> list[dict[str, str]]:
    if not isinstance(items, list):
        return []
    return [b for b in (_button(i) for i in items) if b is not None]


def _instance_view(card: CardRecord) -> dict[str, Any]:
    content = card.content
    markdown_key = card.stream_key if card.stream_key in content else None
    if markdown_key is None:
        markdown_key = next((k for k in MARKDOWN_KEYS if isinstance(content.get(k), str)), None)
    title = next((content[k] for k in TITLE_KEYS if isinstance(content.get(k), str)), None)
    buttons = _buttons(_loads(content.get("buttons")))
    if not buttons:
        full = _loads(content.get("sys_full_json_obj"))
        if isinstance(full, dict):
            buttons = _buttons(full.get("msgButtons"))
    flow = content.get("flowStatus")
    status = FLOW_STATUS.get(flow) if isinstance(flow, str) else None
    if card.streaming_state == "failed" or card.error:
        status = "failed"
    elif card.streaming_state == "finished":
        status = "finished"
    elif status is None and card.streaming_state == "inputing":
        status = "inputing"
    return {
        "title": title,
        "markdown": content.get(markdown_key) if markdown_key else None,
        "markdown_key": markdown_key,
        "flow_status": flow if isinstance(flow, str) else None,
        "status": status,
        "buttons": buttons,
    }


def _standard_view(card: CardRecord) -> dict[str, Any]:
    content = card.content
    header = content.get("header")
    title = None
    if isinstance(header, dict) and isinstance(header.get("title"), dict):
        raw = header["title"].get("text")
        title = raw if isinstance(raw, str) else None
    texts: list[str] = []
    buttons: list[dict[str, str]] = []
    contents = content.get("contents")
    for item in contents if isinstance(contents, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("type") in ("text", "markdown") and isinstance(item.get("text"), str):
            texts.append(item["text"])
        elif item.get("type") == "action":
            buttons.extend(_buttons(item.get("actions")))
    return {
        "title": title,
        "markdown": "\n\n".join(texts) if texts else None,
        "markdown_key": None,
        "flow_status": None,
        "status": None,
        "buttons": buttons,
    }


def card_view(card: CardRecord) -> dict[str, Any]:
    """The console's view of a card (see the module docstring)."""
    view = _standard_view(card) if card.kind == "standard" else _instance_view(card)
    view["finalized"] = card.finalized
    view["error"] = card.error
    return view


def refresh_view(card: CardRecord) -> None:
    card.view = card_view(card)
