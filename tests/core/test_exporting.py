"""Feedback export to CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from imrobots.exporting import FIELDS, write_feedback
from imrobots.models import Feedback, FeedbackRating, Sender

TRICKY = 'Why does "reset", the button,\nnot work?\r\nSecond line'


def items() -> list[Feedback]:
    return [
        Feedback(
            robot="helper",
            platform="dingtalk",
            message_id="m1",
            rating=FeedbackRating.VERY_HELPFUL,
            sender=Sender(id="u1", name="Zhang San 张三"),
            question=TRICKY,
            answer="Try again, please.",
            conversation_id="c1",
            card_id="card1",
            time=datetime(2024, 5, 1, 20, 0, 0, tzinfo=timezone(timedelta(hours=8))),
        ),
        Feedback(
            robot="helper",
            platform="feishu",
            message_id="m2",
            rating=FeedbackRating.NO_HELP,
            sender=Sender(id="u2"),
            question="plain",
            answer="plain answer",
            time=datetime(2024, 5, 2, 9, 30, 0, 250000, tzinfo=UTC),
        ),
    ]


def test_csv_round_trips_through_dictreader() -> None:
    out = io.StringIO(newline="")
    assert write_feedback(items(), "csv", out) == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert len(rows) == 2
    assert tuple(rows[0]) == FIELDS
    first, second = rows
    assert first["question"] == TRICKY
    assert first == {
        "time": "2024-05-01T12:00:00+00:00",
        "robot": "helper",
        "platform": "dingtalk",
        "conversation_id": "c1",
        "message_id": "m1",
        "card_id": "card1",
        "sender_id": "u1",
        "sender_name": "Zhang San 张三",
        "rating": "very_helpful",
        "helpful": "true",
        "question": TRICKY,
        "answer": "Try again, please.",
    }
    assert datetime.fromisoformat(second["time"]) == items()[1].time
    assert second["helpful"] == "false"
    assert second["sender_name"] == second["conversation_id"] == second["card_id"] == ""


def test_csv_of_nothing_is_a_header() -> None:
    out = io.StringIO(newline="")
    assert write_feedback([], "csv", out) == 0
    assert out.getvalue() == ",".join(FIELDS) + "\r\n"


def test_json_is_a_list_of_objects() -> None:
    out = io.StringIO()
    assert write_feedback(iter(items()), "json", out) == 2
    text = out.getvalue()
    assert "张三" in text  # not \\u-escaped
    assert "\n  " in text  # indented
    records = json.loads(text)
    assert [tuple(record) for record in records] == [FIELDS, FIELDS]
    assert records[0]["question"] == TRICKY
    assert records[0]["helpful"] is True
    assert records[0]["time"] == "2024-05-01T12:00:00+00:00"
    assert records[1]["rating"] == "no_help"
    assert records[1]["sender_name"] is None
    assert records[1]["card_id"] is None


def test_unknown_format_is_refused_before_writing() -> None:
    out = io.StringIO()
    with pytest.raises(ValueError, match="csv, json") as raised:
        write_feedback(items(), "xml", out)  # type: ignore[arg-type]
    assert "'xml'" in str(raised.value)
    assert out.getvalue() == ""
