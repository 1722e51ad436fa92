"""Reading JSON from a platform safely: what every plugin's converter needs at its edge.

JSON can carry a lone surrogate (a ``\\ud800`` escape), which Python's parser turns into a
string that cannot be encoded as UTF-8: stored, logged to a file or sent back, it raises.
And JSON nested deeper than the interpreter's recursion limit makes the parser raise
``RecursionError``, not ``ValueError``. :func:`loads` turns both into
:class:`MalformedJson` (a ``ValueError``), or cleans the text: each lone surrogate in a
string becomes U+FFFD, except in the fields that identify something (ids: two different
ids must not become one), which are refused.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

__all__ = ["MalformedJson", "clean", "loads", "valid_text"]


class MalformedJson(ValueError):
    """JSON that cannot be taken: not JSON, nested too deep, or a lone surrogate in an id."""


def valid_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8 (holds no lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean(
    value: Any, ids: Collection[str] = (), *, where: str = "data", key: str | None = None
) -> Any:
    """``value`` with each lone surrogate in a string (keys included) replaced by U+FFFD;
    :class:`MalformedJson` for one in the string value of a field named in ``ids``."""
    if isinstance(value, str):
        if valid_text(value):
            return value
        if key is not None and key in ids:
            raise MalformedJson(f"{where}.{key}: not valid Unicode (a lone surrogate)")
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {
            clean(k): clean(v, ids, where=where, key=k if isinstance(k, str) else None)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [clean(item, ids, where=where) for item in value]
    return value


def loads(text: str | bytes, ids: Collection[str] = (), *, where: str = "data") -> Any:
    """Parse JSON ``text`` from a platform and :func:`clean` it. Raises
    :class:`MalformedJson` for text that is not JSON, nested too deep for the parser, or
    with a lone surrogate in an id field (``ids``)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise MalformedJson(f"{where}: JSON nested too deep") from None
    except ValueError:
        raise MalformedJson(f"{where}: not JSON") from None
    if isinstance(text, bytes):  # escapes, or surrogates encoded raw (0xED 0xA0-0xBF ...),
        escaped = b"\\u" in text or b"\xed" in text  # which json decodes with surrogatepass
    else:  # a str may hold them raw (made by another parser)
        escaped = "\\u" in text or not valid_text(text)
    return clean(value, ids, where=where) if escaped else value
