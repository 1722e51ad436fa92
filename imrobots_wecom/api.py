"""A small asyncio client of the self-built app's OpenAPI (aiohttp), PROTOCOLS 4a.

- ``GET /cgi-bin/gettoken?corpid&corpsecret`` -> ``access_token`` (7,200 s), cached and
  refreshed five minutes early by one caller while the others wait; 40001/40014/42001
  on a call drop it and the call is retried once with a fresh one.
- ``POST /cgi-bin/media/upload?type=`` (multipart field ``media``) -> ``media_id``, for
  image and file messages.
- ``GET /cgi-bin/media/get?media_id=`` -> the bytes of an inbound image, voice, video or
  file (WeCom doc path/90254: the content, or a JSON error), from ``endpoint`` only.
- ``POST /cgi-bin/message/update_template_card`` with a ``response_code`` (path/94888).
- Errors are ``{"errcode", "errmsg"}`` with HTTP 200 and become the core's classes:
  45009 (rate limit) and 45033 (concurrency) :class:`RateLimited`, -1 (busy) and 5xx
  :class:`RetryableError`, the rest :class:`FatalPlatformError`. A request sent without
  an answer is :class:`OutcomeUnknown`.
- The secret goes only into the gettoken query and the token only into the query string
  of calls; neither is ever logged or put into an error message (errors name the route,
  the errcode and errmsg).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from imrobots.platform import (
    FatalPlatformError,
    OutcomeUnknown,
    RateLimited,
    RetryableError,
    Secret,
    redirect_message,
)

__all__ = ["RATE_LIMITED_CODES", "RETRYABLE_CODES", "TOKEN_CODES", "WeComApi", "raise_for"]

RATE_LIMITED_CODES = frozenset({"45009", "45033"})
RETRYABLE_CODES = frozenset({"-1"})
TOKEN_CODES = frozenset({"40001", "40014", "42001"})

log = logging.getLogger("imrobots.wecom.api")


def raise_for(route: str, errcode: int, errmsg: str) -> None:
    """Raise the core's error for a non-zero WeCom errcode."""
    code = str(errcode)
    message = f"WeCom {route}: errcode {errcode} {errmsg}"
    if code in RATE_LIMITED_CODES:
        raise RateLimited(message, code=code, retry_after=1.0)
    if code in RETRYABLE_CODES:
        raise RetryableError(message, code=code)
    raise FatalPlatformError(message, code=code)


def _refuse_redirect(route: str, response: aiohttp.ClientResponse) -> None:
    """A 3xx answer is an error, logged: redirects are never followed (the token rides in
    the query string; see :func:`imrobots.platform.refuse_redirects`)."""
    if 300 <= response.status < 400:
        message = redirect_message(
            f"WeCom {route}", response.status, response.headers.get("Location")
        )
        log.warning("%s", message)
        raise FatalPlatformError(message, code="redirect", status=response.status)


class WeComApi:
    """The app's OpenAPI client; see the module docstring."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        endpoint: str,
        corp_id: str,
        secret: Secret,
        timeout: float = 10.0,
    ) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/")
        self.corp_id = corp_id
        self._secret = secret
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        """Per call (made once: every call passes it)."""
        self._media_timeout = aiohttp.ClientTimeout(total=timeout * 6)
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.token_fetches = 0

    def __repr__(self) -> str:
        return f"WeComApi(corp_id={self.corp_id!r}, endpoint={self.endpoint!r})"

    async def access_token(self, *, refresh: bool = False) -> str:
        async with self._lock:
            if not refresh and self._token and time.monotonic() < self._expires:
                return self._token
            data = await self._get(
                "/cgi-bin/gettoken", {"corpid": self.corp_id, "corpsecret": self._secret.get()}
            )
            token = data.get("access_token")
            if not isinstance(token, str) or not token:
                raise FatalPlatformError("WeCom /cgi-bin/gettoken: no access_token in the answer")
            lifetime = float(data.get("expires_in") or 7200)
            self._token = token
            self._expires = time.monotonic() + max(lifetime / 2, lifetime - 300)
            self.token_fetches += 1
            return token

    async def _get(self, route: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            async with self.session.get(
                self.endpoint + route,
                params=params,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                _refuse_redirect(route, response)
                if response.status >= 500:
                    raise RetryableError(
                        f"WeCom {route}: HTTP {response.status}", status=response.status
                    )
                data = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise RetryableError(f"WeCom {route}: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise RetryableError(f"WeCom {route}: the answer is not a JSON object")
        if data.get("errcode"):
            raise_for(route, int(data["errcode"]), str(data.get("errmsg", "")))
        return data

    async def post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to a token-protected route; returns the answer (errcode 0)."""
        return await self._call(route, {}, lambda: {"json": body})

    async def upload(self, media_type: str, name: str, data: bytes) -> str:
        """Upload temporary media (``POST /cgi-bin/media/upload?type=``, multipart field
        ``media``, as wechatpy's ``WeChatMedia.upload``); returns its ``media_id``."""

        def form() -> dict[str, Any]:
            payload = aiohttp.FormData()
            payload.add_field("media", data, filename=name, content_type="application/octet-stream")
            return {"data": payload}

        answer = await self._call("/cgi-bin/media/upload", {"type": media_type}, form)
        media_id = answer.get("media_id")
        if not isinstance(media_id, str) or not media_id:
            raise FatalPlatformError("WeCom /cgi-bin/media/upload: no media_id in the answer")
        return media_id

    async def media(self, media_id: str, *, limit: int) -> tuple[bytes, str | None]:
        """Download temporary media (``GET /cgi-bin/media/get``); returns the bytes and
        the file name WeCom gives (``Content-Disposition``), if any. WeCom answers a
        JSON ``{"errcode"}`` instead of the content on errors (path/90254). Raises
        :class:`FatalPlatformError` beyond ``limit`` bytes."""
        route = "/cgi-bin/media/get"
        for attempt in (1, 2):
            token = await self.access_token(refresh=attempt == 2)
            try:
                async with self.session.get(
                    self.endpoint + route,
                    params={"access_token": token, "media_id": media_id},
                    timeout=self._media_timeout,
                    allow_redirects=False,
                ) as response:
                    _refuse_redirect(route, response)
                    if response.status >= 500:
                        raise RetryableError(f"WeCom {route}: HTTP {response.status}")
                    if response.status != 200:
                        raise FatalPlatformError(f"WeCom {route}: HTTP {response.status}")
                    if (response.content_length or 0) > limit:
                        raise FatalPlatformError(f"attachment larger than {limit} bytes")
                    kind = response.content_type
                    buffer = bytearray()
                    async for block in response.content.iter_chunked(64 * 1024):
                        buffer += block
                        if len(buffer) > limit:
                            raise FatalPlatformError(f"attachment larger than {limit} bytes")
                    name = (
                        response.content_disposition.filename
                        if (response.content_disposition is not None)
                        else None
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise RetryableError(f"WeCom {route}: {type(exc).__name__}") from None
            # The content comes as a download (Content-Disposition); an error as JSON.
            if buffer[:1] == b"{" and (name is None or kind in ("application/json", "text/plain")):
                try:
                    data = json.loads(bytes(buffer))
                except ValueError:
                    data = None
                if isinstance(data, dict) and data.get("errcode"):
                    errcode = int(data["errcode"])
                    if str(errcode) in TOKEN_CODES and attempt == 1:
                        continue
                    raise_for(route, errcode, str(data.get("errmsg", "")))
            return bytes(buffer), name
        raise AssertionError("unreachable")

    async def _call(
        self, route: str, params: dict[str, str], payload: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """POST to a token-protected route (``payload()`` gives aiohttp's ``json=`` or
        ``data=``, fresh for each attempt); returns the answer (errcode 0)."""
        for attempt in (1, 2):
            token = await self.access_token(refresh=attempt == 2)
            try:
                async with self.session.post(
                    self.endpoint + route,
                    params={**params, "access_token": token},
                    timeout=self._timeout,
                    allow_redirects=False,
                    **payload(),
                ) as response:
                    _refuse_redirect(route, response)
                    if response.status >= 500:
                        raise RetryableError(
                            f"WeCom {route}: HTTP {response.status}", status=response.status
                        )
                    data = await response.json(content_type=None)
            except aiohttp.ClientConnectorError as exc:
                raise RetryableError(f"WeCom {route}: {type(exc).__name__}") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise OutcomeUnknown(f"WeCom {route}: {type(exc).__name__}") from None
            if not isinstance(data, dict):
                raise RetryableError(f"WeCom {route}: the answer is not a JSON object")
            errcode = int(data.get("errcode") or 0)
            if errcode == 0:
                return data
            if str(errcode) in TOKEN_CODES and attempt == 1:
                continue
            raise_for(route, errcode, str(data.get("errmsg", "")))
        raise AssertionError("unreachable")
