"""Checks of the platform endpoints a robot is configured to call.

Calls to a platform carry its credentials (an app secret, an access token, a
connection ticket). Over plain ``http://`` or ``ws://`` to another machine anyone on the
path reads them, so plugins accept those schemes only for a loopback host (the local
emulators: ``127.0.0.0/8``, ``::1``, ``localhost``) and require ``https://`` / ``wss://``
for every other host. Plugins call :func:`endpoint_problem` from their settings checks
and report the line it returns on the field, so ``imrobots check`` names it.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["endpoint_problem", "is_loopback_host"]

LOOPBACK_NAMES = frozenset({"localhost"})
"""Host names taken for loopback besides the ``127.0.0.0/8`` and ``::1`` addresses."""


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a URL's host, brackets optional for IPv6) is this machine:
    ``localhost``, an address in ``127.0.0.0/8``, or ``::1``."""
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_problem(url: str, *, websocket: bool = False, origin: bool = False) -> str | None:
    """Why ``url`` may not serve as a platform endpoint, in one line, or ``None`` if it may.

    ``websocket``: a WebSocket URL (``wss://``; ``ws://`` only for a loopback host), else
    an HTTP one (``https://``; ``http://`` only for a loopback host). ``origin``: the URL
    must be an origin only (no path, query or fragment). The line quotes the URL only when
    it carries no credential (a user-info part or a query string), else its scheme and
    host.
    """
    secure, plain = ("wss", "ws") if websocket else ("https", "http")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return f"must start with {secure}://, got an unreadable URL"
    # A malformed URL ("htp:/user:pw@host") has no netloc for urlsplit to find the
    # user-info in: anything with an "@" or a query is shown without it.
    credential = parts.username or parts.password or parts.query or "@" in url
    shown = repr(url) if not credential else repr(f"{parts.scheme}://{host or '***'}/...")
    if parts.scheme not in (secure, plain) or not host:
        return f"must start with {secure}://, got {shown}"
    if parts.scheme == plain and not is_loopback_host(host):
        return (
            f"must use {secure}:// for a remote host ({plain}:// only for a loopback host: "
            f"127.0.0.0/8, ::1, localhost), got {shown}"
        )
    if origin and (parts.path.strip("/") or parts.query or parts.fragment):
        return f"must be an origin like '{secure}://host[:port]' without a path, got {shown}"
    return None
