"""The Feishu OpenAPI client: lark-oapi's typed client in async form, our token cache.

Every call goes through ``lark_oapi.Client``'s typed request builders and their
``a*`` (async, httpx) methods, pointed at ``settings.domain`` (Feishu, Lark, or the
emulator's 127.0.0.1 origin). Two things are done here instead of by lark-oapi:

- **The tenant token.** lark-oapi fetches it with blocking ``requests`` inside its
  async calls and caches it process-wide per app id (PROTOCOLS 3.5), which would
  block the event loop. The client is built with ``enable_set_token(True)`` and gets
  the token from :class:`FeishuApi`, which fetches it asynchronously (through
  lark-oapi's own ``arequest``), caches it per instance, refreshes it by one caller
  while others wait, 30 minutes before it ends (when Feishu issues the next one,
  PROTOCOLS 3.8) or at half its life if shorter, and drops it on 99991661/99991663
  (the call is then retried once with a fresh one).
- **The transport.** lark-oapi's async methods open a new ``httpx.AsyncClient`` for
  every request (its ``Transport.aexecute``): a new TCP (and TLS) connection per call,
  and a TLS context built on the event loop each time (loading the CA bundle: tens of
  milliseconds of blocked loop per call, measured with ``bench/feishu_answers.py``).
  :meth:`FeishuApi.execute` sends lark-oapi's request objects itself, over one
  ``httpx.AsyncClient`` per app that keeps its connections, and reads the answer into
  the typed response the lark-oapi method declares; :meth:`FeishuApi.close` closes it.
- **Errors** become the core's classes (:func:`classify`): HTTP 429 / 99991400 is
  :class:`RateLimited` honouring ``x-ogw-ratelimit-reset``; 230020 (per chat, per
  message) is :class:`RateLimited` for one second; 5xx is :class:`RetryableError`;
  200740/200750/230011 (card or message gone) are :class:`CardGone`; missing
  permissions (99991672, 99991679) are :class:`Refused`; a redirect (not followed: every
  call stays on the configured domain) is fatal with code ``redirect``; the rest is
  :class:`FatalPlatformError` with Feishu's code. Transport failures say whether
  Feishu may have acted: not connected is retryable, a request sent without an answer
  is :class:`OutcomeUnknown`.

Nothing here logs or raises a secret: the app secret only goes into the token
request body, the token only into the ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import time
import typing
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import lark_oapi as lark  # type: ignore[import-untyped]
from lark_oapi.core.enum import AccessTokenType, HttpMethod  # type: ignore[import-untyped]
from lark_oapi.core.json import JSON  # type: ignore[import-untyped]
from lark_oapi.core.model import (  # type: ignore[import-untyped]
    BaseRequest,
    BaseResponse,
    RawResponse,
    RequestOption,
)
from lark_oapi.core.utils import Files, build_user_agent  # type: ignore[import-untyped]
from yarl import URL

from imrobots.platform import (
    CardGone,
    ConfigError,
    FatalPlatformError,
    OutcomeUnknown,
    PlatformError,
    ProxySettings,
    RateLimited,
    Refused,
    RetryableError,
    Secret,
)

__all__ = [
    "CARD_GONE_CODES",
    "FATAL_CODES",
    "RATE_LIMITED_CODES",
    "RETRYABLE_CODES",
    "AnswerTooLarge",
    "FeishuApi",
    "classify",
]

log = logging.getLogger("imrobots_feishu")

RATE_LIMITED_CODES = frozenset({"99991400", "230020"})
RETRYABLE_CODES = frozenset({"1000040343", "300317"})
"""Internal errors, and a sequence the card had seen (the next attempt has a new one)."""
CARD_GONE_CODES = frozenset({"200740", "200750", "230011"})
"""Card entity not found or expired (PROTOCOLS 3.8); message withdrawn (230011)."""
TOKEN_CODES = frozenset({"99991661", "99991663", "99991668"})
REFUSED_CODES = frozenset({"99991672", "99991679"})
"""The app lacks a permission scope (Feishu's general error codes)."""
FATAL_CODES = frozenset({"230001", "230002", "230025", "200860", "230099", "10014"})


REFUSAL_GIVE_UP = 600.0
"""Seconds of refusal of credentials that worked before after which they are taken for
changed and the refusal is fatal again."""


def classify(
    where: str, status: int, code: int | None, msg: str, headers: Mapping[str, str]
) -> Exception:
    """The core error for a failed call to ``where``: HTTP ``status``, Feishu ``code``."""
    text = f"Feishu {where} failed: HTTP {status}, code {code}: {msg}"
    code_s = str(code) if code is not None else None
    if status == 429 or code_s == "99991400":
        reset = _float(headers.get("x-ogw-ratelimit-reset"))
        return RateLimited(text, code=code_s, retry_after=reset if reset else 1.0)
    if code_s == "230020":
        return RateLimited(text, code=code_s, retry_after=1.0)
    if code_s in CARD_GONE_CODES:
        return CardGone(text, code=code_s)
    if code_s in REFUSED_CODES:
        return Refused(text, code=code_s)
    if 300 <= status < 400:  # never followed: an answer must come from the configured domain
        return FatalPlatformError(
            f"Feishu {where} failed: HTTP {status}, a redirect away from the configured "
            "domain (not followed)",
            code="redirect",
        )
    if status >= 500 or code_s in RETRYABLE_CODES:
        return RetryableError(text, code=code_s)
    return FatalPlatformError(text, code=code_s)


def _httpx_proxy(domain: str) -> httpx.Proxy | None:
    """The proxy for calls to ``domain`` from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``
    and ``NO_PROXY``, read as :mod:`imrobots.proxies` reads them for every other
    connection (httpx's own reading ignores CIDR networks, ports and ``*.`` in
    ``NO_PROXY``, and has no SOCKS4).

    :raises ConfigError: an unusable proxy variable, or a SOCKS4 proxy (httpx has none)."""
    route = ProxySettings.from_env().for_url(URL(domain))
    if route is None:
        return None
    if route.kind.startswith("socks4"):
        raise ConfigError(
            f"{route}: Feishu's API calls go through httpx, which supports http://, "
            "socks5:// and socks5h:// proxies, not SOCKS4"
        )
    auth = (route.username, route.password or "") if route.username is not None else None
    return httpx.Proxy(str(route.url), auth=auth)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class FeishuApi:
    """An async Feishu OpenAPI client for one app. See the module docstring."""

    def __init__(
        self, *, app_id: str, app_secret: Secret, domain: str, timeout: float = 10.0
    ) -> None:
        self.app_id = app_id
        self._secret = app_secret
        self.domain = domain.rstrip("/")
        self.client: Any = (
            lark.Client.builder()
            .app_id(app_id)
            .app_secret(app_secret.get())
            .domain(self.domain)
            .timeout(timeout)
            .enable_set_token(True)
            .log_level(lark.LogLevel.ERROR)
            .build()
        )
        self.timeout = timeout
        self._proxy = _httpx_proxy(self.domain)
        self._http: httpx.AsyncClient | None = None
        self._user_agent = build_user_agent()
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._token_lock = asyncio.Lock()
        self.token_fetches = 0
        self._worked = False
        """A token was obtained with these credentials once."""
        self._refused_since: float | None = None

    def __repr__(self) -> str:
        return f"FeishuApi(app_id={self.app_id!r}, domain={self.domain!r})"

    # ------------------------------------------------------------------ transport
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self.timeout,
                proxy=self._proxy,
                trust_env=False,  # the proxy variables as imrobots reads them, not httpx
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
            )
        return self._http

    async def close(self) -> None:
        """Close the connections (idempotent; the next call opens new ones)."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def execute(
        self,
        request: BaseRequest,
        option: RequestOption | None = None,
        *,
        max_bytes: int | None = None,
    ) -> RawResponse:
        """Send one lark-oapi request over the shared client: the URL, headers and JSON or
        multipart body lark-oapi's transport would send. Raises httpx's errors.

        ``max_bytes``: the most of a body read (a download): a body announced or found
        longer raises :class:`AnswerTooLarge` as soon as that is known, having held at
        most ``max_bytes`` plus one read's chunk in memory."""
        option = option or RequestOption()
        uri = str(request.uri)
        for key, value in (request.paths or {}).items():
            quoted = urllib.parse.quote("" if value is None else str(value), safe="")
            uri = uri.replace(":" + key, quoted)
        url = uri if uri.startswith(("http://", "https://")) else self.domain + uri
        headers = {**(request.headers or {}), "User-Agent": self._user_agent}
        headers.update(option.headers or {})
        if AccessTokenType.TENANT in (request.token_types or ()):
            headers["Authorization"] = f"Bearer {option.tenant_access_token}"
        files = Files.extract_files(request.body) or None
        body = None if request.body is None else json.loads(JSON.marshal(request.body))
        outgoing = self._client().build_request(
            str(request.http_method.name),
            url,
            headers=headers,
            params=request.queries or None,
            json=None if files else body,
            data=body if files else None,
            files=files,
        )
        answer = await self._client().send(outgoing, stream=True)
        try:
            content = await _read_capped(answer, max_bytes)
        finally:
            await answer.aclose()
        raw = RawResponse()
        raw.status_code = answer.status_code
        raw.headers = dict(answer.headers)
        raw.content = content
        return raw

    async def _typed(
        self,
        method: Callable[..., Any],
        request: BaseRequest,
        option: RequestOption,
        max_bytes: int | None = None,
    ) -> Any:
        """What lark-oapi's ``method`` returns for ``request`` (its declared response
        type), the request sent by :meth:`execute`."""
        kind, download = _response_type(method)
        raw = await self.execute(request, option, max_bytes=max_bytes)
        binary = not raw.headers.get("content-type", "").startswith("application/json")
        if download and binary:  # the bytes, not JSON
            response = kind()
            if 200 <= raw.status_code < 300:
                response.code = 0
                response.file = io.BytesIO(raw.content)
                response.file_name = Files.parse_file_name(httpx.Headers(raw.headers))
        else:
            response = JSON.unmarshal(raw.content.decode(), kind)
        response.raw = raw
        return response

    # ------------------------------------------------------------------ token
    def _secret_value(self) -> str:
        return self._secret.get()

    async def token(self) -> str:
        """The tenant token, fetched once and refreshed before it ends."""
        if self._token is not None and time.monotonic() < self._token_refresh_at:
            return self._token
        async with self._token_lock:
            if self._token is not None and time.monotonic() < self._token_refresh_at:
                return self._token
            request = (
                BaseRequest.builder()
                .http_method(HttpMethod.POST)
                .uri("/open-apis/auth/v3/tenant_access_token/internal")
                .body({"app_id": self.app_id, "app_secret": self._secret_value()})
                .build()
            )
            raw = await self._send(
                "auth.tenant_access_token", lambda: self._typed(_plain, request, RequestOption())
            )
            body = _json(raw.raw)
            code = body.get("code")
            token = body.get("tenant_access_token")
            if code != 0 or not isinstance(token, str):
                error = classify(
                    "tenant_access_token",
                    raw.raw.status_code,
                    code if isinstance(code, int) else None,
                    str(body.get("msg", "")),
                    raw.raw.headers,
                )
                if isinstance(error, FatalPlatformError) and self._worked:
                    raise self._refused(error) from None
                raise error
            if self._refused_since is not None:
                log.warning(
                    "Feishu accepts the credentials of app %s again (refused for %.1fs)",
                    self.app_id,
                    time.monotonic() - self._refused_since,
                )
                self._refused_since = None
            self._worked = True
            expire = float(body.get("expire") or 7200)
            self._token = token
            self._token_refresh_at = time.monotonic() + max(min(expire - 1800, expire / 2), 1.0)
            self.token_fetches += 1
            return token

    def _refused(self, error: FatalPlatformError) -> PlatformError:
        """Credentials that worked before, refused now: Feishu's passing fault, retried
        (one error line per streak); fatal again after :data:`REFUSAL_GIVE_UP` seconds."""
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
            log.error(
                "Feishu refused the credentials of app %s that worked before (%s); taken for "
                "a passing fault: calls are retried until Feishu accepts them again",
                self.app_id,
                error,
            )
        elif now - self._refused_since > REFUSAL_GIVE_UP:
            return error
        return RetryableError(
            f"Feishu refused the credentials of app {self.app_id} that worked before "
            f"({error}); retrying",
            code=error.code,
        )

    def drop_token(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is still ``token``, when given: a call that
        failed with an old token does not drop the one fetched since)."""
        if token is None or self._token == token:
            self._token = None

    # ------------------------------------------------------------------ calls
    async def _send(self, where: str, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise RetryableError(
                f"Feishu {where}: could not connect ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise OutcomeUnknown(
                f"Feishu {where}: sent, but no answer ({type(exc).__name__})"
            ) from None
        except ValueError as exc:  # a body that is not JSON (a proxy's error page)
            raise RetryableError(f"Feishu {where}: unreadable answer ({exc})") from None

    async def call(
        self,
        where: str,
        method: Callable[[Any, Any], Awaitable[Any]],
        request: Any,
        *,
        max_bytes: int | None = None,
    ) -> Any:
        """``await method(request, option)`` with the tenant token; returns the typed
        response (whose ``data`` is set) or raises the core error. ``max_bytes`` caps the
        body read (see :meth:`execute`): beyond it, :class:`AnswerTooLarge`."""
        for attempt in range(2):
            token = await self.token()
            option = RequestOption.builder().tenant_access_token(token).build()
            response = await self._send(
                where, functools.partial(self._typed, method, request, option, max_bytes)
            )
            code = getattr(response, "code", None)
            if code == 0:
                return response
            raw = response.raw
            status = int(getattr(raw, "status_code", 0) or 0)
            headers = dict(getattr(raw, "headers", None) or {})
            if str(code) in TOKEN_CODES and attempt == 0:
                self.drop_token(token)
                continue
            raise classify(where, status, code, str(getattr(response, "msg", "")), headers)
        raise AssertionError("unreachable")

    async def raw_call(
        self, where: str, method: HttpMethod, uri: str, body: Any = None
    ) -> dict[str, Any]:
        """A route lark-oapi has no typed request for (``bot/v3/info``): the JSON answer."""
        for attempt in range(2):
            builder = (
                BaseRequest.builder()
                .http_method(method)
                .uri(uri)
                .token_types({AccessTokenType.TENANT})
            )
            if body is not None:
                builder = builder.body(body)
            request = builder.build()
            token = await self.token()
            option = RequestOption.builder().tenant_access_token(token).build()
            response = await self._send(
                where, functools.partial(self._typed, _plain, request, option)
            )
            answer = _json(response.raw)
            code = answer.get("code")
            if code == 0:
                return answer
            if str(code) in TOKEN_CODES and attempt == 0:
                self.drop_token(token)
                continue
            raise classify(
                where,
                int(response.raw.status_code),
                code if isinstance(code, int) else None,
                str(answer.get("msg", "")),
                dict(response.raw.headers or {}),
            )
        raise AssertionError("unreachable")

    async def bot_open_id(self) -> str | None:
        """The robot's own open_id (``GET /open-apis/bot/v3/info``), to strip its mention."""
        answer = await self.raw_call("bot.info", HttpMethod.GET, "/open-apis/bot/v3/info")
        bot = answer.get("bot")
        open_id = bot.get("open_id") if isinstance(bot, dict) else None
        return open_id if isinstance(open_id, str) and open_id else None

    @staticmethod
    def file(data: bytes) -> io.BytesIO:
        return io.BytesIO(data)


class AnswerTooLarge(Exception):
    """A body longer than the ``max_bytes`` a call allowed (see :meth:`FeishuApi.execute`)."""

    def __init__(self, size: int, max_bytes: int) -> None:
        super().__init__(f"over {max_bytes} bytes (at least {size})")
        self.size = size
        self.max_bytes = max_bytes


async def _read_capped(answer: httpx.Response, max_bytes: int | None) -> bytes:
    """The body of a streamed ``answer``, read up to ``max_bytes`` (all of it for None).

    :raises AnswerTooLarge: its Content-Length, or the bytes read so far, exceed it."""
    if max_bytes is None:
        return await answer.aread()
    announced = answer.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > max_bytes:
        raise AnswerTooLarge(int(announced), max_bytes)
    parts: list[bytes] = []
    size = 0
    async for part in answer.aiter_bytes():
        size += len(part)
        if size > max_bytes:
            raise AnswerTooLarge(size, max_bytes)
        parts.append(part)
    return b"".join(parts)


def _plain(request: BaseRequest, option: RequestOption | None = None) -> BaseResponse:
    """Stands for lark-oapi's untyped ``Client.arequest``: its answer is a ``BaseResponse``."""
    raise NotImplementedError  # only its return type is read (by _response_type)


def _response_type(method: Callable[..., Any]) -> tuple[Any, bool]:
    """The response class lark-oapi's ``method`` declares, and whether it is a download
    (a response with a ``file``)."""
    return _declared(getattr(method, "__func__", method))


@functools.cache
def _declared(function: Callable[..., Any]) -> tuple[Any, bool]:
    kind = typing.get_type_hints(function).get("return")
    if not isinstance(kind, type):
        raise TypeError(f"{function!r} does not declare a lark-oapi response type")
    return kind, hasattr(kind(), "file")


def _json(raw: Any) -> dict[str, Any]:
    content = getattr(raw, "content", b"") or b"{}"
    answer = json.loads(content)
    return answer if isinstance(answer, dict) else {}
