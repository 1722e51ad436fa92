"""Proxies for the platforms' long connections and API calls, from the environment.

:func:`client_session` builds the :class:`aiohttp.ClientSession` a platform plugin makes
every outbound call with (its websocket long connection included). It reads, once, when
it is called:

* ``HTTPS_PROXY`` for ``https://`` and ``wss://`` URLs, ``HTTP_PROXY`` for ``http://``
  and ``ws://`` ones, ``ALL_PROXY`` for either when the scheme's own is unset (each also
  in lower case, which wins, as in curl and Python's ``urllib``);
* ``NO_PROXY``: comma-separated host names (``example.com`` also covers its subdomains;
  a leading ``.`` or ``*.`` is the same), IP addresses, CIDR networks
  (``10.0.0.0/8``), or ``*`` for everything. Ports in entries are ignored. Loopback is
  not exempt unless listed: the commands that run emulators (``imrobots demo``,
  ``console``, ``emulate``) add ``localhost,127.0.0.1,::1`` for their own process.

A proxy URL is ``http://[user:password@]host:port`` (an HTTP proxy: ``CONNECT`` for TLS
and websockets over TLS, absolute-form requests for plain ``http://``), or
``socks5://`` (names resolved here), ``socks5h://`` (names resolved by the proxy),
``socks4://`` or ``socks4a://``. A URL without a scheme is an HTTP proxy. SOCKS needs
the ``proxy`` extra (``pip install "imrobots[proxy]"``, which brings ``aiohttp-socks``).
A proxy that cannot be used is a :class:`~imrobots.errors.ConfigError` naming the
variable, with the proxy's password left out.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import aiohttp
import attrs
from yarl import URL

from .errors import ConfigError

__all__ = ["ProxyRoute", "ProxySettings", "client_session", "exempt_loopback"]

log = logging.getLogger("imrobots.proxies")

PROXY_EXTRA = 'pip install "imrobots[proxy]"'
_SOCKS = frozenset({"socks5", "socks5h", "socks4", "socks4a"})
_SCHEME_VARS = {
    "https": "https_proxy",
    "wss": "https_proxy",
    "http": "http_proxy",
    "ws": "http_proxy",
}


@attrs.frozen(kw_only=True)
class ProxyRoute:
    """One proxy: where it is, which variable named it, and its credentials."""

    url: URL
    """``scheme://host:port`` without credentials."""
    variable: str
    """The environment variable it came from (``HTTPS_PROXY``...)."""
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """``http``, ``socks5``, ``socks5h``, ``socks4`` or ``socks4a``."""
        return str(self.url.scheme)

    @property
    def is_socks(self) -> bool:
        return self.kind in _SOCKS

    def __str__(self) -> str:
        user = f"{self.username}:***@" if self.username is not None else ""
        return f"{self.kind}://{user}{self.url.raw_authority} (from {self.variable})"

    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value (Basic), if the URL had credentials."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def _route(variable: str, value: str) -> ProxyRoute:
    raw = value.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        url = URL(raw)
        shown = url.with_password("***") if url.password is not None else url
    except ValueError:
        raise ConfigError(f"{variable} is not a proxy URL") from None
    scheme = url.scheme.lower()
    if scheme not in _SOCKS and scheme != "http":
        raise ConfigError(
            f"{variable}={shown}: the proxy scheme {scheme!r} is not supported; "
            "use http://, socks5://, socks5h://, socks4:// or socks4a://"
        )
    if not url.host:
        raise ConfigError(f"{variable}={shown}: the proxy URL has no host")
    port = url.explicit_port or (1080 if scheme in _SOCKS else 80)
    try:  # yarl checks the host's characters only here ("prox y" passed URL())
        bare = URL.build(scheme=scheme, host=url.host, port=port)
    except ValueError:
        raise ConfigError(f"{variable} is not a proxy URL: its host is not valid") from None
    if scheme.startswith("socks5") and any(
        len((part or "").encode()) > 255 for part in (url.user, url.password)
    ):  # RFC 1929: a one-byte length each (aiohttp-socks failed each connection with
        # "byte must be in range(0, 256)")
        raise ConfigError(
            f"{variable}={shown}: a SOCKS5 user name or password is at most 255 bytes"
        )
    return ProxyRoute(
        url=bare,
        variable=variable,
        username=url.user,
        password=url.password,
    )


def _no_proxy_entry(entry: str) -> str | ipaddress.IPv4Network | ipaddress.IPv6Network:
    entry = entry.strip().lower()
    if entry.startswith("["):
        entry = entry[1:].split("]", 1)[0]
    elif entry.count(":") == 1:
        entry = entry.split(":", 1)[0]
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    return entry.removeprefix("*").lstrip(".").rstrip(".")


@attrs.frozen(kw_only=True)
class ProxySettings:
    """The proxies of an environment; :meth:`for_url` picks one for a URL."""

    http: ProxyRoute | None = None
    https: ProxyRoute | None = None
    all: ProxyRoute | None = None
    no_proxy: tuple[str | ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    everything_direct: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProxySettings:
        """Read the variables (see the module docstring).

        :raises ConfigError: a proxy URL that is not one, or whose scheme is not
            supported."""
        env = os.environ if env is None else env

        def get(name: str) -> tuple[str, str] | None:
            for variable in (name, name.upper()):
                value = env.get(variable)
                if value and value.strip():
                    return variable, value
            return None

        routes: dict[str, ProxyRoute | None] = {}
        for name in ("http_proxy", "https_proxy", "all_proxy"):
            found = get(name)
            routes[name] = _route(*found) if found else None
        raw = get("no_proxy")
        entries = [e for e in (raw[1].split(",") if raw else []) if e.strip()]
        return cls(
            http=routes["http_proxy"],
            https=routes["https_proxy"],
            all=routes["all_proxy"],
            no_proxy=tuple(_no_proxy_entry(e) for e in entries if e.strip() != "*"),
            everything_direct=any(e.strip() == "*" for e in entries),
        )

    @property
    def routes(self) -> list[ProxyRoute]:
        """Every proxy configured."""
        return [r for r in (self.http, self.https, self.all) if r is not None]

    def bypassed(self, host: str) -> bool:
        """Whether ``NO_PROXY`` sends ``host`` direct."""
        if self.everything_direct:
            return True
        host = host.lower().strip("[]").rstrip(".")
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                host
            )
        except ValueError:
            address = None
        for entry in self.no_proxy:
            if isinstance(entry, str):
                if entry and (host == entry or host.endswith("." + entry)):
                    return True
            elif address is not None and address.version == entry.version and address in entry:
                return True
        return False

    def for_url(self, url: URL) -> ProxyRoute | None:
        """The proxy for ``url``, or ``None`` to connect direct."""
        variable = _SCHEME_VARS.get(url.scheme)
        if variable is None or not url.host:
            return None
        route = (self.https if variable == "https_proxy" else self.http) or self.all
        return None if route is None or self.bypassed(url.host) else route


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def exempt_loopback(env: MutableMapping[str, str] | None = None) -> None:
    """Add ``localhost,127.0.0.1,::1`` to ``NO_PROXY`` (and ``no_proxy``) in ``env``
    (default: ``os.environ``) when a proxy is configured there: what the commands that
    run emulators do, since a proxy elsewhere cannot reach this machine's loopback."""
    env = os.environ if env is None else env
    names = ("http_proxy", "https_proxy", "all_proxy")
    if not any((env.get(n) or env.get(n.upper()) or "").strip() for n in names):
        return
    current = env.get("no_proxy") or env.get("NO_PROXY") or ""
    entries = [e.strip() for e in current.split(",") if e.strip()]
    entries += [h for h in LOOPBACK_HOSTS if h not in entries]
    env["no_proxy"] = env["NO_PROXY"] = ",".join(entries)


def _require_socks(route: ProxyRoute) -> Any:
    try:
        import aiohttp_socks
    except ImportError:
        raise ConfigError(
            f"{route} is a SOCKS proxy, which needs the proxy extra: {PROXY_EXTRA}"
        ) from None
    return aiohttp_socks


def _addr_infos(hosts: Iterable[Mapping[str, Any]]) -> list[Any]:
    infos: list[Any] = []
    for host in hosts:
        family = host["family"]
        address = (
            (host["host"], host["port"], 0, 0)
            if family == socket.AF_INET6
            else (host["host"], host["port"])
        )
        infos.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address))
    return infos


def _socks_connector(settings: ProxySettings, **kwargs: Any) -> aiohttp.TCPConnector:
    """A connector that opens connections through the (one) SOCKS proxy for the URLs
    routed to it and direct for the rest."""
    socks = [r for r in settings.routes if r.is_socks]
    if len({(r.url, r.username) for r in socks}) > 1:
        raise ConfigError(
            "different SOCKS proxies for http and https are not supported: "
            + ", ".join(map(str, socks))
        )
    route = socks[0]
    aiohttp_socks = _require_socks(route)
    proxy_type = (
        aiohttp_socks.ProxyType.SOCKS5
        if route.kind.startswith("socks5")
        else aiohttp_socks.ProxyType.SOCKS4
    )
    proxies = {(r.url.host, r.url.port) for r in settings.routes}

    base: Any = aiohttp_socks.ProxyConnector

    class RoutedSocksConnector(base):  # type: ignore[misc]
        """aiohttp-socks' connector, except for URLs ``NO_PROXY`` (or another proxy)
        takes, and for the HTTP proxies themselves, which are connected to direct."""

        def __init__(self) -> None:
            super().__init__(
                host=route.url.host,
                port=route.url.port,
                proxy_type=proxy_type,
                username=route.username,
                password=route.password,
                rdns=route.kind in ("socks5h", "socks4a"),
                **kwargs,
            )
            self._direct_resolver = aiohttp.DefaultResolver()

        # The hook aiohttp-socks itself overrides (aiohttp's TCPConnector, private): one
        # connection to addr_infos for req. NoResolver (aiohttp-socks') left names
        # unresolved, for socks5h; a direct connection resolves them here.
        async def _wrap_create_connection(
            self, *args: Any, addr_infos: list[Any], req: aiohttp.ClientRequest, **kw: Any
        ) -> Any:
            url = req.url
            chosen = settings.for_url(url)
            through = (
                req.proxy is None
                and (url.host, url.port) not in proxies
                and chosen is not None
                and chosen.is_socks
            )
            if through:
                try:
                    return await super()._wrap_create_connection(
                        *args, addr_infos=addr_infos, req=req, **kw
                    )
                except (
                    aiohttp_socks.ProxyError,
                    aiohttp_socks.ProxyConnectionError,
                    aiohttp_socks.ProxyTimeoutError,
                ) as exc:
                    raise aiohttp.ClientConnectionError(
                        f"through {route}: {type(exc).__name__}: {exc}"
                    ) from exc
            host, port = addr_infos[0][4][0], addr_infos[0][4][1]
            hosts = await self._direct_resolver.resolve(host, port, family=socket.AF_UNSPEC)
            return await aiohttp.TCPConnector._wrap_create_connection(
                self, *args, addr_infos=_addr_infos(hosts), req=req, **kw
            )

        async def close(self, *, abort_ssl: bool = False) -> None:
            await self._direct_resolver.close()
            await super().close()

    connector: aiohttp.TCPConnector = RoutedSocksConnector()
    return connector


def client_session(
    *,
    headers: Mapping[str, str] | None = None,
    limit: int = 100,
    ttl_dns_cache: int | None = 10,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> aiohttp.ClientSession:
    """The :class:`aiohttp.ClientSession` for a platform's outbound calls and long
    connection, honouring ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and
    ``NO_PROXY`` from ``env`` (default: ``os.environ``, read now; see the module
    docstring).

    ``headers`` are sent with every request; ``limit`` caps simultaneous connections;
    ``ttl_dns_cache`` is in seconds. Other keyword arguments go to
    :class:`aiohttp.ClientSession` (``trust_env`` is not taken: proxies come from here).
    A request given its own ``proxy=`` keeps it.

    :raises ConfigError: a proxy variable is unusable, or names a SOCKS proxy without
        the ``proxy`` extra installed (the message says what to install)."""
    if "trust_env" in kwargs or "connector" in kwargs:
        raise TypeError("client_session() builds its own connector and proxy settings")
    settings = ProxySettings.from_env(env)
    connector_options: dict[str, Any] = {"limit": limit, "ttl_dns_cache": ttl_dns_cache}
    if any(r.is_socks for r in settings.routes):
        connector = _socks_connector(settings, **connector_options)
    else:
        connector = aiohttp.TCPConnector(**connector_options)
    if settings.routes:
        log.info(
            "outbound connections use %s%s",
            ", ".join(map(str, settings.routes)),
            "; NO_PROXY applies" if settings.no_proxy or settings.everything_direct else "",
        )

    async def route_http_proxies(
        req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if req.proxy is None:
            route = settings.for_url(req.url)
            if route is not None and not route.is_socks:
                authorization = route.authorization()
                proxy_headers = None
                if authorization is not None and req.is_ssl():  # on the CONNECT request
                    proxy_headers = {"Proxy-Authorization": authorization}
                elif authorization is not None:  # on the absolute-form request itself
                    req.headers["Proxy-Authorization"] = authorization
                req.update_proxy(route.url, None, proxy_headers)
        return await handler(req)

    # no HTTP proxy configured: no middleware, which would run on every request for nothing
    http_proxies = any(not r.is_socks for r in settings.routes)
    return aiohttp.ClientSession(
        connector=connector,
        headers=dict(headers or {}),
        middlewares=(route_http_proxies,) if http_proxies else (),
        **kwargs,
    )
