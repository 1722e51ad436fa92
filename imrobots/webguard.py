"""Cross-site request guards for the local web surfaces: the console and the emulators'
control APIs.

A browser will happily send requests from any web page to ``http://127.0.0.1:PORT``: a
cross-origin ``POST`` (a form, or ``fetch`` with a "simple" content type), a cross-origin
WebSocket (browsers apply no same-origin policy to WebSockets), and, through DNS
rebinding, requests whose answers the attacker's page can read (its own domain, resolved
to 127.0.0.1 after the page loaded). :class:`WebGuard` is the aiohttp middleware that
stops all three on the paths it guards:

* **Host**: the ``Host`` header must name an IP address, ``localhost``, or one of the
  configured ``public_hosts``. A DNS-rebinding request carries the attacker's domain name
  there (an IP address cannot be rebound), so it is refused.
* **Origin**: a state-changing request (any method but ``GET``, ``HEAD`` and ``OPTIONS``)
  and a WebSocket upgrade that carry an ``Origin`` header must come from the page's own
  origin (the same ``host:port`` as ``Host``) or from a public host; ``Origin: null``
  is refused. Requests without ``Origin`` (curl, SDKs, scripts) pass this check.
* **Token**: a state-changing request must carry the guard's token, in the
  ``X-Imrobots-Token`` header, as ``Authorization: Bearer TOKEN``, or in the guard's
  cookie (which the console's page receives when it is loaded). With
  ``token_for_reads`` (a server bound beyond loopback), every guarded request needs it,
  WebSocket upgrades included; a browser then opens ``/?token=TOKEN`` once.

A refused request is answered 403 with a compact JSON ``{"error":"..."}`` (UTF-8, as the
emulators write their other answers) and logged (warning,
logger ``imrobots.security``); the token never appears in either.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from .payloads import dumps

__all__ = [
    "LOOPBACK_NAMES",
    "TOKEN_HEADER",
    "WebGuard",
    "control_guard",
    "is_loopback",
    "json_response",
    "new_token",
]

log = logging.getLogger("imrobots.security")

TOKEN_HEADER = "X-Imrobots-Token"
"""The request header that carries a guard's token."""
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def json_response(
    payload: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``payload`` as a compact UTF-8 JSON response (``{"error":"..."}``), written by
    orjson (:func:`imrobots.payloads.dumps`; ``json.dumps`` through aiohttp's
    ``json_response`` was about 6 % of an emulator's request handling under load,
    ``bench/engine.py``): what the guard refuses with, and what emulators answer."""
    return web.Response(
        body=dumps(payload),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def new_token() -> str:
    """A fresh random token (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def _host_name(value: str) -> str:
    """The host name of a ``Host`` header or URL authority, lowercased, without the port,
    the IPv6 brackets or a trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


_HOST_HEADER = re.compile(r"(?:\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(?::[0-9]{1,5})?")
"""What a ``Host`` header may be (RFC 9110 7.2: ``uri-host [ ":" port ]``), lowercased:
a name or IPv4 address, or an IPv6 address in brackets, and an optional port. Not a
user-info part (``127.0.0.1:80@evil.example``), a path or a space, which no browser
sends and which would otherwise be read for the host they are not."""


def _host_names(hosts: Iterable[str]) -> frozenset[str]:
    return frozenset(_host_name(h) for h in hosts)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ``::1``)."""
    name = _host_name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@attrs.frozen(kw_only=True)
class WebGuard:
    """Host, Origin and token checks for the paths under ``prefix`` (see the module
    docstring).

    ``token``: what state-changing requests must carry (compared in constant time);
    ``public_hosts``: host names (no port) besides IP addresses and ``localhost`` that
    may appear in ``Host`` and ``Origin`` (a reverse proxy's name); ``token_for_reads``:
    require the token on every guarded request (a server bound beyond loopback);
    ``cookie``: whether the token may come in a cookie (the console's page);
    ``entry``: the path whose ``GET ?token=`` a browser opens once to get the cookie.
    """

    token: str = attrs.field(repr=False)
    public_hosts: frozenset[str] = attrs.field(default=frozenset(), converter=_host_names)
    prefix: str = "/"
    token_for_reads: bool = False
    cookie: bool = False
    entry: str | None = None

    @property
    def cookie_name(self) -> str:
        """The cookie that carries the token: named after a digest of the token, so that
        consoles on other ports of the same host (which share cookies) do not overwrite
        each other's."""
        digest = hashlib.sha256(self.token.encode()).hexdigest()[:12]
        return f"imrobots_{digest}"

    def headers(self) -> dict[str, str]:
        """The request headers that authorize a non-browser client."""
        return {TOKEN_HEADER: self.token}

    def host_allowed(self, host: str | None) -> bool:
        """Whether a ``Host`` header value may reach the guarded paths (a malformed
        one never does)."""
        if not host or _HOST_HEADER.fullmatch(host.strip().lower()) is None:
            return False
        name = _host_name(host)
        return name == "localhost" or _is_ip(name) or name in self.public_hosts

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a request from ``origin`` (an ``Origin`` header) to ``host`` (its
        ``Host`` header) is same-origin, or from a public host."""
        if origin == "null":
            return False
        try:
            url = URL(origin)
        except ValueError:
            return False
        if url.scheme not in ("http", "https") or not url.host:
            return False
        if _host_name(url.host) in self.public_hosts:
            return True
        if host is None:
            return False
        authority = url.raw_authority.lower()
        wanted = host.strip().lower()
        if authority == wanted:
            return True
        default = {"http": 80, "https": 443}[url.scheme]
        return url.port == default and authority.rsplit(":", 1)[0] == wanted

    def token_in(self, request: web.Request) -> bool:
        """Whether ``request`` carries the token (header, bearer, cookie, or ``?token=``
        on the entry path)."""
        given = request.headers.get(TOKEN_HEADER)
        if given is None:
            auth = request.headers.get(hdrs.AUTHORIZATION, "")
            if auth[:7].lower() == "bearer ":
                given = auth[7:].strip()
        if given is None and self.cookie:
            given = request.cookies.get(self.cookie_name)
        if given is None and self.entry is not None and request.path == self.entry:
            given = request.query.get("token")
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def refusal(self, request: web.Request) -> str | None:
        """Why ``request`` is refused, or ``None`` if it may pass."""
        if not request.path.startswith(self.prefix):
            return None
        host = request.headers.get(hdrs.HOST)
        if not self.host_allowed(host):
            return (
                f"the Host {host!r} is not allowed here (a guard against DNS rebinding); "
                "use an IP address or localhost (the console and demo also take a host name "
                "given with --public-host)"
            )
        upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        changes = request.method not in SAFE_METHODS
        origin = request.headers.get(hdrs.ORIGIN)
        if (changes or upgrade) and origin is not None and not self.origin_allowed(origin, host):
            return f"cross-origin request from {origin!r} refused"
        if (changes or self.token_for_reads) and not self.token_in(request):
            return (
                f"this request needs the server's token (the {TOKEN_HEADER} header, "
                "or open the console's URL as printed at start)"
            )
        return None

    @property
    def middleware(self) -> Middleware:
        """The aiohttp middleware: pass it in ``web.Application(middlewares=[...])``."""

        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            reason = self.refusal(request)
            if reason is not None:
                log.warning(
                    "refused %s %s from %s: %s",
                    request.method,
                    request.path,
                    request.remote,
                    reason,
                )
                return json_response({"error": reason}, status=403)
            return await handler(request)

        return guard


def control_guard(
    token: str, *, prefix: str = "/_emulator", public_hosts: Iterable[str] = ()
) -> Middleware:
    """The middleware an emulator puts in front of its control API (the paths under
    ``prefix``): Host and Origin checks, and ``token`` for state-changing calls.

    The platform-facing routes the official SDKs call (token endpoints, OpenAPI, the
    long-connection gateway) stay unguarded, as on the real platform: they check the
    emulated app's credentials instead, and SDKs send no ``Origin``."""
    return WebGuard(token=token, prefix=prefix, public_hosts=frozenset(public_hosts)).middleware
