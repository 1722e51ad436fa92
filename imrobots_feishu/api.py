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
- **Errors** become the core's classes (:func:`classify`): HTTP 429 / 99991400 is
  :class:`RateLimited` honouring ``x-ogw-ratelimit-reset``; 230020 (per chat, per
  message) is :class:`RateLimited` for one second; 5xx is :class:`RetryableError`;
  200740/200750/230011 (card or message gone) are :class:`CardGone`; missing
  permissions (99991672, 99991679) are :class:`Refused`; the rest is
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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import lark_oapi as lark  # type: ignore[import-untyped]
from lark_oapi.core.enum import AccessTokenType, HttpMethod  # type: ignore[import-untyped]
from lark_oapi.core.model import BaseRequest, RequestOption  # type: ignore[import-untyped]

from imrobots.platform import (
    CardGone,
    FatalPlatformError,
    OutcomeUnknown,
    PlatformError,
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
    if status >= 500 or code_s in RETRYABLE_CODES:
        return RetryableError(text, code=code_s)
    return FatalPlatformError(text, code=code_s)


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
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._token_lock = asyncio.Lock()
        self.token_fetches = 0
        self._worked = False
        """A token was obtained with these credentials once."""
        self._refused_since: float | None = None

    def __repr__(self) -> str:
        return f"FeishuApi(app_id={self.app_id!r}, domain={self.domain!r})"

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
                "auth.tenant_access_token", lambda: self.client.arequest(request)
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

    def drop_token(self) -> None:
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
        self, where: str, method: Callable[[Any, Any], Awaitable[Any]], request: Any
    ) -> Any:
        """``await method(request, option)`` with the tenant token; returns the typed
        response (whose ``data`` is set) or raises the core error."""
        for attempt in range(2):
            token = await self.token()
            option = RequestOption.builder().tenant_access_token(token).build()
            response = await self._send(where, functools.partial(method, request, option))
            code = getattr(response, "code", None)
            if code == 0:
                return response
            raw = response.raw
            status = int(getattr(raw, "status_code", 0) or 0)
            headers = dict(getattr(raw, "headers", None) or {})
            if str(code) in TOKEN_CODES and attempt == 0:
                self.drop_token()
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
            option = RequestOption.builder().tenant_access_token(await self.token()).build()
            response = await self._send(
                where, functools.partial(self.client.arequest, request, option)
            )
            answer = _json(response.raw)
            code = answer.get("code")
            if code == 0:
                return answer
            if str(code) in TOKEN_CODES and attempt == 0:
                self.drop_token()
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


def _json(raw: Any) -> dict[str, Any]:
    content = getattr(raw, "content", b"") or b"{}"
    answer = json.loads(content)
    return answer if isinstance(answer, dict) else {}
