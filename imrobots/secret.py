"""A string that never shows itself in reprs, logs, error messages or serialized config,
and the one helper that redacts secrets inside URLs before they are logged or shown.

``Secret`` is deliberately not an attrs class: ``attrs.asdict`` and ``cattrs``'s unstructure
recurse into attrs instances, which would copy the value out into a plain dict. As an opaque
object it stays wrapped (and prints ``***``) wherever a config is turned into data.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = ["RedactingFilter", "Secret", "redact_text", "redact_url"]


class Secret:
    """Holds a credential. ``str()``/``repr()`` print ``***``; call :meth:`get` to use it.

    Equal to another ``Secret`` with the same value (never to a plain ``str``); hashable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The credential itself; pass it only to the call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        # Pickling (e.g. to a worker process) keeps the value; it is never printed.
        return (Secret, (self._value,))


# --- secrets inside URLs ---------------------------------------------------------------------

REDACTED = "***"

SECRET_PARAM = re.compile(
    r"token|secret|key|sign|signature|password|passwd|pwd|auth|credential|session|ticket|code",
    re.IGNORECASE,
)
"""Query parameter names whose values are treated as secrets (matched anywhere in the
name: ``access_token``, ``client_secret``, ``appkey``, ``sign``, ``session``...)."""

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo and the values of secret-looking query
    parameters (:data:`SECRET_PARAM`) replaced by ``***``; other parts kept as written.

    >>> redact_url("https://bot:pw@example.com/send?access_token=abc&x=1")
    'https://bot:***@example.com/send?access_token=***&x=1'

    Text that is not a URL is returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, equals, value = piece.partition("=")
            if equals and value and SECRET_PARAM.search(unquote_plus(name)):
                piece = f"{name}={REDACTED}"
            pieces.append(piece)
        query = "&".join(pieces)
    fragment = parts.fragment
    if fragment and "=" in fragment:  # OAuth implicit flows put tokens here
        fragment = redact_url(f"x://h/?{fragment}").partition("?")[2]
    if netloc == parts.netloc and query == parts.query and fragment == parts.fragment:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url` (for log lines,
    error messages and descriptions that may quote an endpoint)."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    url = match.group(0)
    core = url.rstrip(".,;:!?)]}")  # punctuation after a URL in prose is not part of it
    return redact_url(core) + url[len(core) :]


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets in URLs (:func:`redact_text`) in every record
    it sees: the message with its arguments, and the text of an attached exception.
    ``imrobots run`` installs it on its log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact_text(text)
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
