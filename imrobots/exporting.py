"""Export stored feedback as CSV or JSON, for spreadsheets and analysis scripts."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO, get_args

from .models import Feedback

__all__ = ["FIELDS", "FORMATS", "ExportFormat", "write_feedback"]

ExportFormat = Literal["csv", "json"]

FORMATS: Final[tuple[str, ...]] = get_args(ExportFormat)
"""The formats :func:`write_feedback` writes."""

FIELDS: Final = (
    "time",
    "robot",
    "platform",
    "conversation_id",
    "message_id",
    "card_id",
    "sender_id",
    "sender_name",
    "rating",
    "helpful",
    "question",
    "answer",
)
"""Columns of the CSV export and keys of the JSON objects, in this order."""


def _iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:  # Feedback times are aware; a naive one is taken to be UTC.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _record(feedback: Feedback) -> dict[str, Any]:
    return {
        "time": _iso_utc(feedback.time),
        "robot": feedback.robot,
        "platform": feedback.platform,
        "conversation_id": feedback.conversation_id,
        "message_id": feedback.message_id,
        "card_id": feedback.card_id,
        "sender_id": feedback.sender.id,
        "sender_name": feedback.sender.name,
        "rating": feedback.rating.value,
        "helpful": feedback.helpful,
        "question": feedback.question,
        "answer": feedback.answer,
    }


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_feedback(feedback: Iterable[Feedback], fmt: ExportFormat, out: TextIO) -> int:
    """Write ``feedback`` to ``out`` as ``csv`` or ``json``; return how many were written.

    Both formats have the keys of :data:`FIELDS`: ``time`` is ISO-8601 in UTC,
    ``rating`` the rating's value (``very_helpful``...), ``helpful`` its coarse
    type. CSV has a header row, quotes fields that hold commas, quotes or line
    breaks, writes a missing value as an empty field and ``helpful`` as
    ``true``/``false``; open the file with ``newline=""``. JSON is one indented
    list of objects, with missing values as ``null`` and non-ASCII text as is.

    CSV cells are written verbatim: a spreadsheet may evaluate a question that
    starts with ``=``, ``+``, ``-`` or ``@`` as a formula.

    Raises ``ValueError`` for any other ``fmt``, before writing anything.
    """
    if fmt not in FORMATS:  # callers may pass any string at runtime
        raise ValueError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(FIELDS)
        count = 0
        for item in feedback:
            record = _record(item)
            writer.writerow([_csv_value(record[field]) for field in FIELDS])
            count += 1
        return count
    records = [_record(item) for item in feedback]
    json.dump(records, out, ensure_ascii=False, indent=2)
    out.write("\n")
    return len(records)
