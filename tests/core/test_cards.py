"""Cards: unique element ids, plain-text fallback, the answer lifecycle builders."""

from __future__ import annotations

import pytest

from imrobots.cards import (
    Actions,
    Button,
    Card,
    CardStatus,
    Markdown,
    error_card,
    final_card,
    interrupted_card,
    thinking_card,
)
from imrobots.models import FeedbackRating


def test_element_ids_are_unique_even_when_made_together() -> None:
    cards = [
        final_card("q", "a", feedback={r: r.value for r in FeedbackRating}) for _ in range(200)
    ]
    ids = [element_id for card in cards for element_id in card.element_ids()]
    assert len(ids) == len(set(ids))


def test_a_card_refuses_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="used twice"):
        Card(elements=(Markdown(text="a", id="x"), Markdown(text="b", id="x")))
    button = Button(label="ok", value="1", id="b1")
    with pytest.raises(ValueError, match="used twice"):
        Card(elements=(Actions(buttons=(button, button)),))


def test_final_card_has_the_seed_four_feedback_buttons_in_order() -> None:
    card = final_card(
        "Where is my order?",
        "It ships **tomorrow**.",
        feedback={r: f"v-{r.value}" for r in FeedbackRating},
    )
    assert card.status is CardStatus.FINAL
    assert card.title == "Where is my order?"
    assert [b.label for b in card.buttons] == [
        "Very helpful",
        "Helpful",
        "Not much help",
        "No help",
    ]
    assert [b.value for b in card.buttons] == [f"v-{r.value}" for r in FeedbackRating]
    assert "It ships **tomorrow**." in card.markdown


def test_plain_text_fallback() -> None:
    card = final_card("Q?", "Answer.", feedback={r: r.value for r in FeedbackRating})
    text = card.plain_text()
    assert text.splitlines()[0] == "Q?"
    assert "Answer." in text and "[Very helpful]" in text
    assert Card(title="t", fallback="custom").plain_text() == "custom"


def test_lifecycle_builders() -> None:
    assert thinking_card("q").status is CardStatus.THINKING
    assert "thinking" in thinking_card("q").markdown
    err = error_card("q", "partial")
    assert err.status is CardStatus.ERROR and "partial" in err.plain_text()
    stopped = interrupted_card("q", "so far")
    assert stopped.status is CardStatus.INTERRUPTED and "interrupted" in stopped.plain_text()
    assert all(s.is_terminal for s in (CardStatus.FINAL, CardStatus.ERROR, CardStatus.INTERRUPTED))
    assert not CardStatus.THINKING.is_terminal
