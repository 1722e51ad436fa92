"""imrobots.payloads against json, on generated values (hypothesis, a dev dependency)."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("hypothesis")

from hypothesis import given
from hypothesis import strategies as st

from imrobots.payloads import clean, dumps, loads, parse

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_dumps_then_loads_matches_json(value: Any) -> None:
    raw = dumps(value)
    raw.decode("utf-8")  # always valid UTF-8
    assert json.loads(raw) == json.loads(json.dumps(value))
    assert parse(raw) == json.loads(json.dumps(value))
    assert parse(json.dumps(value)) == json.loads(json.dumps(value))


any_text = st.text(  # lone surrogates included, and often
    st.characters(exclude_categories=()) | st.sampled_from(["\ud800", "\udfff", "\ud83d"])
)
values_with_surrogates = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)


@given(values_with_surrogates, st.booleans(), st.booleans())
def test_parse_and_loads_read_as_json_reads(value: Any, ascii: bool, as_bytes: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii)
    given_text: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    expected = json.loads(text)
    assert parse(given_text) == expected
    assert loads(given_text) == clean(expected)
    written = dumps(value)
    written.decode("utf-8")  # always valid UTF-8
    # what json's escapes read as (a pair of surrogates held raw in a str, once escaped,
    # reads as the one character they encode)
    assert json.loads(written) == json.loads(json.dumps(value))
