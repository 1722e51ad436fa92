"""imrobots.payloads: orjson on the fast path, json's results (and errors) on every path."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from imrobots.payloads import MalformedJson, dumps, loads, parse
from imrobots.platform import (
    LoneSurrogate,
    dump_json,
    escape_surrogates,
    find_lone_surrogate,
    load_json,
    may_hold_lone_surrogate,
    parse_json,
    parse_json_strict,
)

IDS = ("msgId",)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_platform_reexports_the_helpers() -> None:
    assert (dump_json, load_json, parse_json) == (dumps, loads, parse)


@pytest.mark.parametrize("text", ['{"a": 1, "b": [true, null, 1.5, "x"]}', "[]", '"s"', "0"])
@pytest.mark.parametrize("kind", [str, bytes])
def test_loads_gives_what_json_gives(text: str, kind: type) -> None:
    given_text = text if kind is str else text.encode()
    assert loads(given_text) == json.loads(text)
    assert parse(given_text) == json.loads(text)


def test_a_lone_surrogate_escape_becomes_u_fffd_in_text() -> None:
    assert loads('{"text": "a\\ud800b", "k\\udfff": 1}', IDS) == {"text": "a\ufffdb", "k\ufffd": 1}
    assert loads(b'{"text": "a\\ud800b"}', IDS) == {"text": "a\ufffdb"}


def test_a_lone_surrogate_encoded_raw_becomes_u_fffd() -> None:
    assert loads(b'{"text": "a\xed\xa0\x80b"}') == {"text": "a\ufffdb"}
    assert loads('{"text": "a\ud800b"}') == {"text": "a\ufffdb"}  # a str holding it raw


def test_a_lone_surrogate_in_an_id_is_refused() -> None:
    with pytest.raises(MalformedJson, match=r"data\.msgId: not valid Unicode"):
        loads('{"msgId": "m\\ud800"}', IDS)
    with pytest.raises(MalformedJson, match=r"push\.msgId"):
        loads(b'{"msgId": "m\xed\xa0\x80"}', IDS, where="push")


def test_a_surrogate_pair_escape_is_one_character() -> None:
    assert loads('{"msgId": "\\ud83d\\ude00"}', IDS) == {"msgId": "\U0001f600"}


def test_parse_keeps_a_lone_surrogate() -> None:
    assert parse('{"messageId": "m\\ud800"}') == {"messageId": "m\ud800"}


@pytest.mark.parametrize("function", [loads, parse])
@pytest.mark.parametrize("depth", [300, 1025, 5000, 100_000])
def test_nesting_too_deep_for_json_is_malformed_whatever_orjson_takes(
    function: Any, depth: int
) -> None:
    text = nested(depth)
    try:
        expected = json.loads(text)
    except RecursionError:
        with pytest.raises(MalformedJson, match="nested too deep"):
            function(text)
    else:  # what json takes at this stack depth, taken the same way
        assert function(text) == expected


def test_nesting_below_the_limits_is_taken() -> None:
    value = loads(nested(200))
    for _ in range(199):
        (value,) = value
    assert value == []


@pytest.mark.parametrize("text", ["", "nope", "{", '{"a": 1,}', "\ufeff{}", b"\xff", "[1] 2"])
@pytest.mark.parametrize("function", [loads, parse])
def test_not_json_is_malformed(function: Any, text: str | bytes) -> None:
    with pytest.raises(MalformedJson, match="push: not JSON"):
        function(text, where="push")


@pytest.mark.parametrize(
    "number",
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(10**19), 10**30, -(10**40)],
)
def test_integers_are_exact_beyond_64_bits(number: int) -> None:
    value = loads(f'{{"n": {number}, "m": [{number}]}}')
    assert value == {"n": number, "m": [number]}
    assert type(value["n"]) is int
    assert dumps(value) == f'{{"n":{number},"m":[{number}]}}'.encode()


def test_a_long_run_of_digits_in_a_string_changes_nothing() -> None:
    text = '{"msgId": "12345678901234567890123", "x": 1.5}'
    assert loads(text, IDS) == json.loads(text)


def test_nan_and_infinity_are_read_as_json_reads_them() -> None:
    value = loads("[NaN, Infinity, -Infinity, 1e400]")
    assert math.isnan(value[0])
    assert value[1:] == [math.inf, -math.inf, math.inf]


def test_the_last_duplicate_key_wins_as_in_json() -> None:
    assert loads('{"a": 1, "a": 2}') == json.loads('{"a": 1, "a": 2}') == {"a": 2}


def test_dumps_is_compact_utf8() -> None:
    assert (
        dumps({"a": 1, "b": ["中文", None, True, 1.5]})
        == '{"a":1,"b":["中文",null,true,1.5]}'.encode()
    )
    assert dumps(("x",)) == b'["x"]'


def test_dumps_escapes_a_lone_surrogate_and_stays_utf8() -> None:
    raw = dumps({"text": "中\ud800"})
    assert raw == b'{"text":"\\u4e2d\\ud800"}'
    assert json.loads(raw) == {"text": "中\ud800"}


def test_dumps_takes_what_json_takes_and_orjson_refuses() -> None:
    assert dumps({1: "a", None: 2, 1.5: 3}) == b'{"1":"a","null":2,"1.5":3}'
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    assert json.loads(dumps(deep)) == deep


def test_dumps_writes_nan_as_null_and_refuses_it_on_json_s_path() -> None:
    assert dumps([math.nan, math.inf]) == b"[null,null]"
    with pytest.raises(ValueError, match="not JSON compliant"):
        dumps({1: math.nan})


@pytest.mark.parametrize("value", [object(), datetime.now(UTC), {"a": {1, 2}}])
def test_dumps_refuses_what_is_not_json(value: object) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps(value)


def test_dumps_writes_a_uuid_as_its_text() -> None:
    value = uuid.UUID(int=1)
    assert dumps(value) == f'"{value}"'.encode()


STRICT_CASES: list[tuple[bytes, str | None]] = [
    (b'{"a": "x\\ud800"}', "a"),
    (b'{"a": "x\\udc00y"}', "a"),
    (b'{"a": ["ok", {"b\\ud800": 1}]}', "a[1].b\\ud800"),
    (b'{"a": "\\ud83d\\ude42"}', None),  # a pair: one character
    (b'{"a": "\\\\ud800"}', None),  # an escaped backslash: the text \ud800
    ('{"a": "x\ud800"}'.encode("utf-8", "surrogatepass"), "a"),  # encoded raw
    ('{"a": "x\ud800"}'.encode("utf-16-le", "surrogatepass"), "a"),  # json reads UTF-16
    ('{"a": "中文"}'.encode("utf-16"), None),
    ('{"a": "中文"}'.encode(), None),
    (b"[" * 200 + b'"\\ud800"' + b"]" * 200, "[0]" * 200),
]


@pytest.mark.parametrize(("text", "path"), STRICT_CASES)
def test_parse_json_strict_finds_each_lone_surrogate(text: bytes, path: str | None) -> None:
    if path is None:
        assert parse_json_strict(text) == json.loads(text)
        assert not (may_hold_lone_surrogate(text) and find_lone_surrogate(json.loads(text)))
        return
    assert may_hold_lone_surrogate(text)  # the cheap check never misses one
    with pytest.raises(LoneSurrogate) as caught:
        parse_json_strict(text, where="body")
    assert caught.value.path == path == find_lone_surrogate(json.loads(text))
    assert str(caught.value).startswith("body: a lone surrogate")
    str(caught.value).encode("utf-8")  # the message itself can be sent and logged


def test_any_buffer_of_json_reads_as_its_bytes() -> None:
    raw = '{"a": [1, "中"], "b": "x\\ud800"}'.encode()
    expected = json.loads(raw)
    for buffer in (raw, bytearray(raw), memoryview(raw)):
        assert parse_json(buffer) == expected
        assert load_json(buffer) == {"a": [1, "中"], "b": "x\ufffd"}
    with pytest.raises(LoneSurrogate):
        parse_json_strict(memoryview(raw))


def test_one_id_field_given_as_a_str_is_that_name_not_its_letters() -> None:
    text = b'{"msgId": "m\\ud800", "m": "x\\ud800"}'
    with pytest.raises(MalformedJson, match=r"data\.msgId"):
        load_json(text, "msgId")
    # "m" is one letter of "msgId": matched as a substring before, so refused
    assert load_json(text, "msgId2") == {"msgId": "m\ufffd", "m": "x\ufffd"}
    assert escape_surrogates("a\ud800") == "a\\ud800"


def test_the_first_lone_surrogate_is_named_in_document_order() -> None:
    assert find_lone_surrogate({"msgId": "\ud800", "text": "\udc00"}) == "msgId"
    assert find_lone_surrogate(["ok", "\ud800", "\udc00"]) == "[1]"
    assert find_lone_surrogate({"a": {"x": "\ud800"}, "b\ud800": 1}) == "a.x"
    assert find_lone_surrogate({"a": 1, "b\ud800": {"c": "\ud800"}}) == "b\\ud800"
    with pytest.raises(LoneSurrogate, match="in msgId"):
        parse_json_strict(b'{"msgId": "\\ud800", "text": "\\udc00"}')
    for buffer in (bytearray(b'{"a": "\\ud800"}'), memoryview(b'{"a": "\\ud800"}')):
        assert may_hold_lone_surrogate(buffer)
    assert not may_hold_lone_surrogate(memoryview(b'{"a": [1, 2]}'))
