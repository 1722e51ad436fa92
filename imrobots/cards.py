"""A platform-neutral card and builders for the answer lifecycle.

A :class:`Card` is a title and a list of elements (markdown, divider, a row of
buttons, a note). Platform plugins render it to their own card JSON; platforms
without cards use :meth:`Card.plain_text`.

The answer lifecycle is: :func:`thinking_card` -> :func:`streaming_card`
(updated as text arrives) -> :func:`final_card` with four feedback buttons, or
:func:`error_card` / :func:`interrupted_card`.
"""

from __future__ import annotations

import enum
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from .models import FeedbackRating
from .payloads import displayable

__all__ = [
    "Actions",
    "Button",
    "Card",
    "CardStatus",
    "Divider",
    "Element",
    "Markdown",
    "Note",
    "error_card",
    "final_card",
    "interrupted_card",
    "new_id",
    "streaming_card",
    "thinking_card",
]

_counter = itertools.count(1)
_process_tag = os.urandom(4).hex()


def new_id(prefix: str) -> str:
    """Return an id unique in this process and, with high probability, across processes.

    The seed built ids from a millisecond timestamp, so two elements made in the
    same millisecond collided; a counter cannot.
    """
    return f"{prefix}_{_process_tag}_{next(_counter)}"


class CardStatus(enum.StrEnum):
    """Where a card is in the answer lifecycle."""

    THINKING = "thinking"
    STREAMING = "streaming"
    FINAL = "final"
    ERROR = "error"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        return self in (CardStatus.FINAL, CardStatus.ERROR, CardStatus.INTERRUPTED)


@attrs.frozen(kw_only=True)
class Markdown:
    """A block of markdown text."""

    text: str = attrs.field(converter=displayable)
    id: str = attrs.field(factory=lambda: new_id("md"))


@attrs.frozen(kw_only=True)
class Divider:
    """A horizontal rule."""

    id: str = attrs.field(factory=lambda: new_id("divider"))


@attrs.frozen(kw_only=True)
class Button:
    """A button that sends ``value`` back to the robot when pressed."""

    label: str = attrs.field(converter=displayable)
    value: str = attrs.field(repr=False)
    style: str = "default"
    """``primary``, ``default`` or ``danger``; platforms map it to what they have."""
    id: str = attrs.field(factory=lambda: new_id("button"))


@attrs.frozen(kw_only=True)
class Actions:
    """A row of buttons."""

    buttons: tuple[Button, ...]
    id: str = attrs.field(factory=lambda: new_id("actions"))


@attrs.frozen(kw_only=True)
class Note:
    """Small print under the content (status line, disclaimer)."""

    text: str = attrs.field(converter=displayable)
    id: str = attrs.field(factory=lambda: new_id("note"))


Element = Markdown | Divider | Actions | Note


def _check_unique_ids(
    instance: Card, attribute: attrs.Attribute[Any], value: tuple[Element, ...]
) -> None:
    if len(value) < 2 and not (value and isinstance(value[0], Actions)):
        return  # one id at most (a streaming card's one markdown block)
    seen: set[str] = set()
    for element_id in instance.element_ids():
        if element_id in seen:
            raise ValueError(f"card element id {element_id!r} is used twice")
        seen.add(element_id)


@attrs.frozen(kw_only=True)
class Card:
    """A platform-neutral card."""

    title: str | None = attrs.field(default=None, converter=attrs.converters.optional(displayable))
    elements: tuple[Element, ...] = attrs.field(default=(), validator=_check_unique_ids)
    status: CardStatus = CardStatus.FINAL
    fallback: str | None = None
    """Text shown where the card cannot be drawn; derived from the content when ``None``."""

    def element_ids(self) -> Iterator[str]:
        for element in self.elements:
            yield element.id
            if isinstance(element, Actions):
                for button in element.buttons:
                    yield button.id

    @property
    def buttons(self) -> tuple[Button, ...]:
        return tuple(b for e in self.elements if isinstance(e, Actions) for b in e.buttons)

    @property
    def markdown(self) -> str:
        """The markdown of all markdown elements, joined by blank lines."""
        return "\n\n".join(e.text for e in self.elements if isinstance(e, Markdown))

    def plain_text(self) -> str:
        """A plain-text rendering for platforms or clients that cannot draw cards."""
        if self.fallback is not None:
            return self.fallback
        parts: list[str] = []
        if self.title:
            parts.append(self.title)
        for element in self.elements:
            if isinstance(element, Markdown):
                parts.append(element.text)
            elif isinstance(element, Divider):
                parts.append("---")
            elif isinstance(element, Note):
                parts.append(element.text)
            else:
                parts.append(" | ".join(f"[{b.label}]" for b in element.buttons))
        return "\n\n".join(p for p in parts if p)


THINKING_TEXT = "[thinking] Analysing your question, please wait..."
INTERRUPTED_NOTE = "(answer interrupted)"
ERROR_NOTE = "Sorry, something went wrong while answering. Please try again."


def thinking_card(question: str, *, text: str = THINKING_TEXT) -> Card:
    """The card sent at once: the question as title and a "thinking" line."""
    return Card(title=question, elements=(Markdown(text=text),), status=CardStatus.THINKING)


def streaming_card(question: str, text: str) -> Card:
    """The card while the answer streams: the text so far."""
    return Card(title=question, elements=(Markdown(text=text),), status=CardStatus.STREAMING)


def feedback_buttons(values: Mapping[FeedbackRating, str]) -> Actions:
    """The seed's four feedback buttons; ``values`` maps each rating to the value it sends."""
    return Actions(
        buttons=tuple(
            Button(
                label=rating.label,
                value=values[rating],
                style="primary" if rating is FeedbackRating.VERY_HELPFUL else "default",
            )
            for rating in FeedbackRating
        )
    )


def final_card(
    question: str,
    answer: str,
    *,
    feedback: Mapping[FeedbackRating, str] | None = None,
    notes: Sequence[str] = (),
) -> Card:
    """The finished answer: the question, the whole answer, a divider and the feedback buttons."""
    elements: list[Element] = [Markdown(text=answer)]
    elements.extend(Note(text=note) for note in notes)
    if feedback:
        elements.append(Divider())
        elements.append(feedback_buttons(feedback))
    return Card(title=question, elements=tuple(elements), status=CardStatus.FINAL)


def error_card(question: str, partial: str = "", *, reason: str = ERROR_NOTE) -> Card:
    """The answer failed: whatever text arrived, then an error note."""
    elements: list[Element] = []
    if partial:
        elements.append(Markdown(text=partial))
        elements.append(Divider())
    elements.append(Note(text=reason))
    return Card(title=question, elements=tuple(elements), status=CardStatus.ERROR)


def interrupted_card(question: str, partial: str = "", *, reason: str = INTERRUPTED_NOTE) -> Card:
    """The answer was cancelled (shutdown, or a newer message): the text so far and a note."""
    elements: list[Element] = []
    if partial:
        elements.append(Markdown(text=partial))
    elements.append(Note(text=reason))
    return Card(title=question, elements=tuple(elements), status=CardStatus.INTERRUPTED)
