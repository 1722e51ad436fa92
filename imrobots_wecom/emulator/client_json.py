"""Reading a client's JSON: what the emulator takes, and the lone surrogates it refuses.

JSON may escape a lone surrogate (``"a\\ud800b"``): valid JSON, which :func:`json.loads`
turns into a ``str`` UTF-8 cannot carry (measured, stored, logged, sent back or shown
in the console, it raises ``UnicodeEncodeError``). A client can send such text (the
official SDKs, users' own code, tests); the emulator refuses it where it reads the
client's JSON, with the platform's answer to a bad request, and goes on.

UNCONFIRMED: what WeCom answers to such text is not documented (PROTOCOLS says
nothing): the emulator refuses it so that a client learns to send text it can carry.
"""

from __future__ import annotations

from typing import Any

from imrobots.platform import MalformedJson, parse_json, valid_text

__all__ = [
    "LoneSurrogate",
    "find_lone_surrogate",
    "may_hold_lone_surrogate",
    "read_client_json",
    "shown",
]


class LoneSurrogate(MalformedJson):
    """Client JSON holding a lone surrogate in a string or a key; the message names where
    (``"frame: a lone surrogate in body.stream.content (not valid Unicode)"``)."""

    def __init__(self, where: str, path: str) -> None:
        self.where = where
        self.path = path
        inside = f" in {path}" if path else ""
        super().__init__(f"{where}: a lone surrogate{inside} (not valid Unicode)")


def shown(key: Any) -> str:
    """``key`` as text for a message or a record: a lone surrogate written as its escape
    (``\\ud800``)."""
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def find_lone_surrogate(value: Any) -> str | None:
    """The path (``"a.b[2]"``, ``""`` for ``value`` itself) of the first string or key in
    the parsed JSON ``value`` that holds a lone surrogate, or ``None`` when there is none.
    Iterative: as deep as the parser took."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not valid_text(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                inner = f"{path}.{shown(key)}" if path else shown(key)
                if isinstance(key, str) and not valid_text(key):
                    return inner
                stack.append((child, inner))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(item))
    return None


def may_hold_lone_surrogate(text: str | bytes) -> bool:
    """Whether ``text`` may parse into a lone surrogate: it has a ``\\u`` escape, NUL bytes
    (UTF-16 or UTF-32, which :func:`json.loads` also reads), or is not valid UTF-8 (a
    surrogate encoded raw, which json decodes). A cheap over-estimate (a few microseconds
    for a few KB) that spares most bodies the walk of :func:`find_lone_surrogate`."""
    if isinstance(text, str):
        return "\\u" in text or not (text.isascii() or valid_text(text))
    if b"\\u" in text or b"\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def read_client_json(text: str | bytes, *, where: str = "body") -> Any:
    """The value of JSON ``text`` from a client. Raises :class:`LoneSurrogate` for text with
    a lone surrogate anywhere in it, :class:`~imrobots.platform.MalformedJson` (both are
    ``ValueError``) for text that is not JSON or is nested too deep. ``where`` names the
    text in the error's message."""
    value = parse_json(text, where=where)
    if may_hold_lone_surrogate(text):
        path = find_lone_surrogate(value)
        if path is not None:
            raise LoneSurrogate(where, path)
    return value
