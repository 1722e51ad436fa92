"""Reading JSON from a platform safely, and writing JSON fast: what every plugin needs at its edge.

JSON can carry a lone surrogate (a ``\\ud800`` escape), which Python's parser turns into a
string that cannot be encoded as UTF-8: stored, logged to a file or sent back, it raises.
And JSON nested deeper than the interpreter's recursion limit makes the parser raise
``RecursionError``, not ``ValueError``. :func:`loads` turns both into
:class:`MalformedJson` (a ``ValueError``), or cleans the text: each lone surrogate in a
string becomes U+FFFD, except in the fields that identify something (ids: two different
ids must not become one), which are refused.

Parsing and writing go through orjson (about 2 to 10 times faster than :mod:`json` on a
platform's payloads); the rare text or value orjson refuses or would read differently
(lone surrogates, ``NaN``, integers beyond 64 bits, nesting deeper than orjson's limits)
takes the standard library's path, so the results are those of :func:`json.loads`.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import orjson

__all__ = [
    "LoneSurrogate",
    "MalformedJson",
    "clean",
    "displayable",
    "dumps",
    "escape_surrogates",
    "find_lone_surrogate",
    "loads",
    "may_hold_lone_surrogate",
    "parse",
    "parse_strict",
    "valid_text",
]


JsonText = str | bytes | bytearray | memoryview
"""JSON text: a ``str``, or its encoded bytes in any buffer (UTF-8, or UTF-16/32 as
:func:`json.loads` takes)."""


class MalformedJson(ValueError):
    """JSON that cannot be taken: not JSON, nested too deep, or a lone surrogate in an id."""


class LoneSurrogate(MalformedJson):
    """JSON holding a lone surrogate in a string or a key, where none may be taken; the
    message names where (``"body: a lone surrogate in cardData.title (not valid
    Unicode)"``)."""

    def __init__(self, where: str, path: str) -> None:
        self.where = where
        self.path = path
        inside = f" in {path}" if path else ""
        super().__init__(f"{where}: a lone surrogate{inside} (not valid Unicode)")


def valid_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8 (holds no lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def displayable(text: str) -> str:
    """``text`` with each lone surrogate (which no platform can show, and UTF-8 cannot
    carry) replaced by U+FFFD; an adjacent high and low surrogate become the one character
    they encode. Returns ``text`` itself when it has none (the usual case, checked fast)."""
    if text.isascii() or valid_text(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def escape_surrogates(value: object) -> str:
    """``str(value)`` with each lone surrogate written as its escape (``\\ud800``): text a
    message, a log line or a record can carry."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def find_lone_surrogate(value: Any) -> str | None:
    """The path (``"a.b[2]"``, ``""`` for ``value`` itself) of the first string or key in
    the parsed JSON ``value`` that holds a lone surrogate, or ``None`` when there is none.
    Iterative: as deep as the parser took."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:  # depth first, in document order: children pushed last first
        item, path = stack.pop()
        if isinstance(item, str):
            if not valid_text(item):
                return path
        elif isinstance(item, dict):
            children: list[tuple[Any, str]] = []
            for key, child in item.items():
                inner = f"{path}.{escape_surrogates(key)}" if path else escape_surrogates(key)
                if isinstance(key, str) and not valid_text(key):
                    children.append((key, inner))  # the key itself: found when popped
                children.append((child, inner))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend((item[i], f"{path}[{i}]") for i in range(len(item) - 1, -1, -1))
    return None


def may_hold_lone_surrogate(text: JsonText) -> bool:
    """Whether JSON ``text`` may parse into a lone surrogate: it has a ``\\u`` escape, NUL
    bytes (UTF-16 or UTF-32, which :func:`json.loads` also reads), or is not valid UTF-8
    (a surrogate encoded raw, which json decodes). A cheap over-estimate (a few
    microseconds for a few KB) that spares most texts the walk of
    :func:`find_lone_surrogate`."""
    if isinstance(text, str):
        return "\\u" in text or not (text.isascii() or valid_text(text))
    if isinstance(text, bytearray | memoryview):
        text = bytes(text)
    if b"\\u" in text or b"\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def clean(
    value: Any, ids: Collection[str] = (), *, where: str = "data", key: str | None = None
) -> Any:
    """``value`` with each lone surrogate in a string (keys included) replaced by U+FFFD;
    :class:`MalformedJson` for one in the string value of a field named in ``ids`` (a
    collection of field names; one ``str`` is taken as one name)."""
    if isinstance(ids, str):
        ids = (ids,)
    if isinstance(value, str):
        shown = displayable(value)
        if shown is not value and key is not None and key in ids:
            raise MalformedJson(f"{where}.{key}: not valid Unicode (a lone surrogate)")
        return shown
    if isinstance(value, dict):
        return {
            clean(k): clean(v, ids, where=where, key=k if isinstance(k, str) else None)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [clean(item, ids, where=where) for item in value]
    return value


_MARKS = bytes(
    0x30 if 0x30 <= byte <= 0x39 else 0x5B if byte in b"[{" else 0x20 for byte in range(256)
)
"""A :meth:`bytes.translate` table: digits become ``0``, ``[`` and ``{`` become ``[``,
every other byte a space."""
_LONG_NUMBER = b"0" * 19
"""19 digits in a row: where an integer may lie beyond 64 bits (-2**63 - 1 has 19 digits),
which orjson reads as a float and :func:`json.loads` exactly."""
_MANY_OPENINGS = 256
"""More ``[`` and ``{`` than this: the text may nest deeper than :func:`json.loads` takes
(its limit depends on the interpreter's stack; orjson takes 1024 levels)."""


def _odd(raw: bytes) -> bool:
    """Whether JSON that orjson parsed may read differently with :func:`json.loads`: an
    integer beyond 64 bits, or nesting that json may refuse (a cheap over-estimate of both:
    digits and brackets in strings count too)."""
    marks = raw.translate(_MARKS)
    return _LONG_NUMBER in marks or marks.count(b"[") > _MANY_OPENINGS


_SMALL = 4096
"""Bytes up to which :func:`_plain` looks at the parsed value before :func:`_odd` reads the
text (on a push's frame, whose values are strings, about a third of its cost)."""
_PLAIN_DEPTH = 16
_SCALARS = (str, int, bool, type(None))


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether orjson's ``value`` is sure to be what :func:`json.loads` makes of the same
    text: it holds no float (orjson reads an integer beyond 64 bits as one, and a mantissa
    of 19 digits or more may round otherwise) and nests at most 16 deep. Strings and
    integers orjson parsed are json's too. ``False`` says nothing: :func:`_odd` decides."""
    values = value.values() if type(value) is dict else value
    for item in values:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if (kind is not dict and kind is not list) or depth >= _PLAIN_DEPTH:
            return False
        if not _plain(item, depth + 1):
            return False
    return True


def _stdlib(text: str | bytes, where: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise MalformedJson(f"{where}: JSON nested too deep") from None
    except ValueError:
        raise MalformedJson(f"{where}: not JSON") from None


def _read(text: JsonText, where: str) -> tuple[Any, bool]:
    """The value :func:`json.loads` makes of ``text``, parsed by orjson when it can, and
    whether it may hold lone surrogates (only what json parsed may: orjson refuses them)."""
    if isinstance(text, bytearray | memoryview):  # json.loads takes no memoryview
        text = bytes(text)
    if isinstance(text, str):
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate held raw (made by another parser)
            return _stdlib(text, where), True
    else:
        raw = text
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Not JSON, or what orjson refuses and json takes: lone surrogates (escaped, or
        # encoded raw as 0xED 0xA0-0xBF ..., which json decodes with surrogatepass), NaN,
        # 1e400, nesting beyond 1024.
        return _stdlib(text, where), True
    # orjson took it: valid UTF-8 without lone surrogates, nothing to clean
    kind = type(value)
    if kind is dict or kind is list:
        if len(raw) <= _SMALL and _plain(value):
            return value, False
    elif kind is not float:
        return value, False  # a lone string, integer, true, false or null
    return (_stdlib(text, where) if _odd(raw) else value), False


def parse(text: JsonText, *, where: str = "data") -> Any:
    """The value :func:`json.loads` makes of ``text`` (lone surrogates kept as they are;
    ``load_json`` cleans them), parsed by orjson when it can. Raises :class:`MalformedJson`
    for text that is not JSON or is nested too deep for the parser. ``where`` names the
    text in the error's message."""
    return _read(text, where)[0]


def parse_strict(text: JsonText, *, where: str = "data") -> Any:
    """``parse_json``, refusing a lone surrogate anywhere in the value (in a string or a
    key): JSON from a peer that must send text it can carry (an emulator reading its
    client). Raises :class:`LoneSurrogate` for one, :class:`MalformedJson` (both are
    ``ValueError``) for text that is not JSON or is nested too deep."""
    value, surrogates = _read(text, where)
    if surrogates:  # only text orjson refused may hold one
        path = find_lone_surrogate(value)
        if path is not None:
            raise LoneSurrogate(where, path)
    return value


def loads(text: JsonText, ids: Collection[str] = (), *, where: str = "data") -> Any:
    """Parse JSON ``text`` from a platform, each lone surrogate in a string (keys
    included) replaced by U+FFFD. Raises
    :class:`MalformedJson` for text that is not JSON, nested too deep for the parser, or
    with a lone surrogate in an id field (``ids``). ``where`` names the text in the
    error's message (``"data"``, ``"data.msgId"``)."""
    value, surrogates = _read(text, where)
    return clean(value, ids, where=where) if surrogates else value


_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
"""Dataclasses and datetimes go to the fallback, where :mod:`json` refuses them."""


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON (no spaces: ``{"a":1}``) in UTF-8, non-ASCII written as is:
    the JSON of ``json.dumps(value, ensure_ascii=False, separators=(",", ":"))``, written
    by orjson when it can.

    What orjson refuses takes :mod:`json`'s path: keys that are not str (``1`` becomes
    ``"1"``), integers beyond 64 bits (written exactly), nesting deeper than 254 levels.
    A lone surrogate, which UTF-8 cannot carry, is written as its escape (``"\\ud800"``,
    the whole text then ASCII), which :func:`json.loads` reads back as the same string.
    NaN and infinities, which are not JSON, become ``null`` (orjson's choice) or, in a
    value that takes :mod:`json`'s path, raise :class:`ValueError`. Raises
    :class:`TypeError` for a value that is not of a JSON type (dict, list, tuple, str,
    int, float, bool, None; orjson also writes enums and UUIDs), :class:`RecursionError`
    for nesting beyond the interpreter's limit."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError:
        pass
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it (and all non-ASCII)
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")
