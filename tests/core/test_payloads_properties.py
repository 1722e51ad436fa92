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


def _typed(value: Any) -> Any:
    """``value`` with the type of every leaf (so that 1 and 1.0 differ)."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    return (type(value).__name__, repr(value))


wide_numbers = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.integers(min_value=2**62, max_value=2**65)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(allow_nan=False, allow_infinity=False, places=20).map(float)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


@given(wide_numbers, st.integers(min_value=0, max_value=40))
def test_parse_reads_the_types_and_digits_json_reads(value: Any, depth: int) -> None:
    """Integers beyond 64 bits, long mantissas and nesting: parse reads exactly what
    json.loads reads (orjson's value only where it cannot differ)."""
    text = "[" * depth + json.dumps(value) + "]" * depth
    assert _typed(parse(text)) == _typed(json.loads(text))
    assert _typed(parse(text.encode())) == _typed(json.loads(text))
