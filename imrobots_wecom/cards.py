"""Core :class:`~imrobots.platform.Card` -> WeCom JSON.

- :func:`stream_text`: what a stream reply shows: the card's markdown and notes (a
  stream reply has no title; PROTOCOLS 4c). The core's status is carried by its
  wording only ("(answer interrupted)", the error note), as WeCom has no card status.
- :func:`template_card`: a ``template_card`` (PROTOCOLS 4a/4c): ``button_interaction``
  with ``button_list`` when the card has buttons, else ``text_notice``. The title goes
  to ``main_title.title``, the text to ``sub_title_text``, each button's value to its
  ``key`` (what ``template_card_event.event_key`` sends back). ``task_id`` names the
  card (the core's card id), so a press and its ``update_template_card`` address it.
  UNCONFIRMED: WeCom's length limits on ``sub_title_text`` and button ``key`` in
  robot template cards are not documented in our sources; long text goes in stream
  replies, and a template card answering a message only carries what a stream cannot
  (title and buttons, ``with_text=False``). Only a proactive card (``aibot_send_msg``
  has no stream: past a stream's lifetime, after a reconnect) carries its text here.
- :func:`app_template_card`: the ``template_card`` of a self-built app's ``message/send``
  (WeCom doc path/90236): ``button_interaction`` (``main_title``, ``sub_title_text``,
  ``button_list`` of at most 6 buttons, each ``key`` at most 1,024 bytes, ``task_id``)
  when the card has buttons, else ``text_notice``, which WeCom requires to carry a
  ``card_action`` link (type 1, a URL): :func:`app_template_card` returns ``None`` for a
  card without buttons when no link is configured (the card then goes as markdown).
  WeCom recommends at most 26 characters for ``main_title.title`` and 160 for
  ``sub_title_text`` (path/90236; recommendations, no documented hard cap).
"""

from __future__ import annotations

import re
from typing import Any

from imrobots.platform import Actions, Card, Markdown, Note

__all__ = ["APP_TASK_ID", "BUTTON_STYLES", "app_template_card", "stream_text", "template_card"]

BUTTON_STYLES = {"primary": 1, "default": 2, "danger": 3}
"""Core button style -> WeCom ``button_list[].style`` (1 blue, 2 grey, 3 red; UNCONFIRMED)."""


APP_TASK_ID = re.compile(r"^[A-Za-z0-9_@-]{1,128}$")
"""A self-built app's ``task_id``: digits, letters and ``_-@``, at most 128 bytes, unique
within the app (path/90236)."""
APP_MAX_BUTTONS = 6


def stream_text(card: Card) -> str:
    """The markdown of ``card`` for a stream reply (markdown and notes, in order)."""
    parts = [
        element.text
        for element in card.elements
        if isinstance(element, Markdown | Note) and element.text
    ]
    return "\n\n".join(parts)


def template_card(card: Card, task_id: str, *, with_text: bool = True) -> dict[str, Any]:
    """The ``template_card`` JSON of ``card``; see the module docstring."""
    buttons = [b for e in card.elements if isinstance(e, Actions) for b in e.buttons]
    body: dict[str, Any] = {
        "card_type": "button_interaction" if buttons else "text_notice",
        "main_title": {"title": card.title or ""},
        "task_id": task_id,
    }
    text = stream_text(card)
    if with_text and text:
        body["sub_title_text"] = text
    if buttons:
        body["button_list"] = [
            {"text": b.label, "style": BUTTON_STYLES.get(b.style, 2), "key": b.value}
            for b in buttons
        ]
    else:
        body["card_action"] = {"type": 0}
    return body


def app_template_card(
    card: Card, task_id: str, *, card_url: str | None, with_text: bool = True
) -> dict[str, Any] | None:
    """The app-mode ``template_card`` of ``card`` (see the module docstring), or ``None``
    for a card without buttons when ``card_url`` is not set."""
    buttons = [b for e in card.elements if isinstance(e, Actions) for b in e.buttons]
    body: dict[str, Any] = {"main_title": {"title": card.title or ""}, "task_id": task_id}
    text = stream_text(card) or ("" if buttons else card.plain_text())
    if with_text and text:
        body["sub_title_text"] = text
    if buttons:
        body["card_type"] = "button_interaction"
        body["button_list"] = [
            {"text": b.label, "style": BUTTON_STYLES.get(b.style, 2), "key": b.value}
            for b in buttons[:APP_MAX_BUTTONS]
        ]
        return body
    if not card_url:
        return None
    body["card_type"] = "text_notice"
    body["card_action"] = {"type": 1, "url": card_url}
    return body
