"""A small asyncio client of the DingTalk OpenAPI routes a robot uses (aiohttp).

- The access token (``POST /v1.0/oauth2/accessToken``) is cached and refreshed
  five minutes before it expires (or at half its lifetime, if that is shorter),
  by one caller while the others wait; a 401 (or ``InvalidAuthentication``)
  drops it, and the call is retried once with a fresh one. The same token serves
  the old-style ``oapi`` routes (``media/upload``) as ``access_token``.
- Errors become the core's exceptions (:func:`classify`): throttling
  (403 ``Forbidden.AccessDenied.Qps*``/``Qpm*``, 429) is :class:`RateLimited`,
  5xx/``system.busy`` are :class:`RetryableError`, an unknown card on an update is
  :class:`CardGone`, a missing permission on a card API is :class:`Refused`
  (app-wide, naming the permission and where to grant it), the rest
  :class:`FatalPlatformError`.
- Transport failures say whether DingTalk may have acted: a request that never
  reached it (connection refused, connect time-out) is :class:`RetryableError`;
  one that was sent but got no answer (read time-out, connection dropped after the
  request was written) is :class:`OutcomeUnknown`, which the core repeats only
  where the plugin made the call idempotent.
- Nothing here logs or raises a secret: the app secret goes only into the token
  request body, the token only into a header (or the ``oapi`` query string, never
  logged), and error messages carry the route, the status, DingTalk's code and
  message and the request id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from imrobots.platform import (
    CardGone,
    FatalPlatformError,
    MalformedJson,
    OutcomeUnknown,
    PlatformError,
    RateLimited,
    Refused,
    RetryableError,
    Secret,
    dump_json,
    parse_json,
    redirect_message,
)

__all__ = [
    "AUTH_CODES",
    "CARD_GONE_CODES",
    "DUPLICATE_CODES",
    "FATAL_CODES",
    "PERMISSION_CODES",
    "PERMISSION_PAGE",
    "RATE_LIMITED_CODES",
    "RETRYABLE_CODES",
    "DingTalkApi",
    "classify",
]

log = logging.getLogger("imrobots_dingtalk.api")

RATE_LIMITED_CODES = frozenset(
    {
        "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi",
        "Forbidden.AccessDenied.QpsLimitForApi",
        "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi",
        "Forbidden.AccessDenied.QpmLimitForApi",
        "Forbidden.AccessDenied.QpsLimitForSuitekeyAndOrgAndApi",
        "Forbidden.AccessDenied.QpmLimitForSuitekeyAndOrgAndApi",
        "Throttling",
        "toomuch.msg",
        "send.too.fast",
        "90018",
        "90002",
        "130101",
    }
)
"""DingTalk codes that mean "slow down" (PROTOCOLS 2.2, 2.7)."""

RETRYABLE_CODES = frozenset({"system.busy", "systemBusy", "system.error", "ServiceUnavailable"})
"""Codes that mean "the server is busy, try again"."""

CARD_GONE_CODES = frozenset(
    {
        "param.stream.outTrackId",
        "cardInstance.notExist",
        "param.cardNotExist",
        "invalid.bizId",
    }
)
"""Codes an *update* gets when the card no longer exists (PROTOCOLS 2.3, 2.5)."""

DUPLICATE_CODES = frozenset({"param.cardAlreadyExist"})
"""Codes a *create* gets when a card with its id already exists (PROTOCOLS 2.4): a retry
of a create that took effect; the card is there."""

AUTH_CODES = frozenset({"InvalidAuthentication", "invalidAuthentication", "Unauthorized"})
"""Codes of a missing, unknown or expired access token."""

PERMISSION_CODES = frozenset(
    {"Forbidden.AccessDenied.AccessTokenPermissionDenied", "AccessTokenPermissionDenied"}
)
"""The app lacks a permission the API needs (403, with ``accessdenieddetail.requiredScopes``;
open-dingtalk/dingtalk-stream-sdk-python#20)."""

PERMISSION_PAGE = (
    "the app's permission page in the DingTalk developer console "
    "(https://open-dev.dingtalk.com > your app > 权限管理 / Permissions)"
)
"""Where an app's API permissions are granted."""

FATAL_CODES = (
    AUTH_CODES
    | PERMISSION_CODES
    | frozenset(
        {
            "invalidClientIdOrSecret",
            "authFailed",
            "Forbidden.AccessDenied.ApiCountLimitForOrg",
            "invalid.robotCode",
            "param.templateNotExist",
            "param.stream.content",
        }
    )
)
"""Codes that retrying will not fix (credentials, permissions, monthly quota, bad requests)."""

OAPI_TOKEN_ERRCODES = frozenset({40001, 40014, 41001, 42001})
"""Old-style error codes of a missing, invalid or expired ``access_token``."""

TOKEN_MARGIN = 300.0
"""Refresh the token this many seconds before it expires (as the SDK does)."""

REFUSAL_PAUSE = 0.5
"""Seconds after a refused token request during which callers get the same refusal
without asking DingTalk again (50 answers retrying must not hammer the endpoint)."""
REFUSAL_GIVE_UP = 600.0
"""Seconds of refusal of credentials that worked before after which they are taken
for changed (revoked, rotated) and the refusal is fatal again."""

HttpMethod = Literal["GET", "POST", "PUT"]

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _required_scopes(body: Any) -> list[str]:
    detail = body.get("accessdenieddetail") if isinstance(body, dict) else None
    scopes = detail.get("requiredScopes") if isinstance(detail, dict) else None
    if not isinstance(scopes, list):
        return []
    return [str(scope) for scope in scopes if isinstance(scope, str | int)]


def classify(
    what: str,
    status: int,
    body: Any,
    *,
    headers: Mapping[str, str] | None = None,
    card_update: bool = False,
    card: bool = False,
) -> PlatformError:
    """Turn a failed answer into the core exception the engine acts on.

    ``what`` names the call (``"PUT /v1.0/card/streaming"``), ``body`` is the
    parsed JSON (or text) answer; ``card_update`` says an unknown-card code means
    :class:`CardGone`; ``card`` says the call makes or changes a card, so that a
    missing permission is :class:`Refused` app-wide (the core then answers with
    markdown messages instead of cards).
    """
    headers = headers or {}
    code: str | None = None
    message = ""
    request_id: str | None = None
    if isinstance(body, dict):
        raw_code = body.get("code", body.get("errcode"))
        code = str(raw_code) if raw_code is not None else None
        raw_message = body.get("message", body.get("errmsg", ""))
        message = str(raw_message) if raw_message is not None else ""
        raw_id = body.get("requestid", body.get("request_id"))
        request_id = str(raw_id) if raw_id is not None else None
        if body.get("status") == 1111:  # egress IP banned (PROTOCOLS 2.7); GUESS: "wait" minutes
            wait = body.get("wait")
            seconds = float(wait) * 60 if isinstance(wait, int | float) else 300.0
            return RateLimited(
                f"{what}: DingTalk banned this IP for a while (too many calls)",
                code="ip.banned",
                status=status,
                retry_after=seconds,
            )
    elif isinstance(body, str) and body:
        message = body.strip().splitlines()[0][:200]
    if code is not None and code in PERMISSION_CODES:
        scopes = _required_scopes(body)
        missing = ", ".join(scopes) if scopes else "the permission this API needs"
        text = (
            f"DingTalk {what} refused: the app lacks the permission {missing} "
            f"({status} {code}"
            + (f", request id {request_id}" if request_id else "")
            + f"); grant it on {PERMISSION_PAGE}"
        )
        if card:
            return Refused(text, code=code, status=status, app_wide=True)
        return FatalPlatformError(text, code=code, status=status)
    detail = f"{status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    if request_id:
        detail += f" (request id {request_id})"
    text = f"DingTalk {what} failed: {detail}"
    throttled = code is not None and (
        code in RATE_LIMITED_CODES or "QpsLimit" in code or "QpmLimit" in code
    )
    if status == 429 or throttled:
        return RateLimited(text, code=code, status=status, retry_after=_retry_after(headers))
    if status >= 500 or (code is not None and code in RETRYABLE_CODES):
        return RetryableError(text, code=code, status=status, retry_after=_retry_after(headers))
    if card_update and code is not None and code in CARD_GONE_CODES:
        return CardGone(text, code=code, status=status)
    return FatalPlatformError(text, code=code, status=status)


def _is_auth_error(status: int, body: Any) -> bool:
    if status == 401:
        return True
    return isinstance(body, dict) and body.get("code") in AUTH_CODES


async def _read_body(response: aiohttp.ClientResponse) -> Any:
    raw = await response.read()
    if not raw:
        return None
    try:
        return parse_json(raw, where="answer")
    except MalformedJson:
        return raw.decode("utf-8", errors="replace")


_CONNECT_FAILURES: tuple[type[BaseException], ...] = (aiohttp.ClientConnectorError,) + (
    (aiohttp.ConnectionTimeoutError,) if hasattr(aiohttp, "ConnectionTimeoutError") else ()
)
"""Failures before the request left (aiohttp < 3.10 has no ``ConnectionTimeoutError``: a
connect time-out there counts as a time-out after sending)."""


def _transport_error(what: str, exc: BaseException, timeout: float) -> PlatformError:
    """Say whether a request that failed in transit may have reached DingTalk."""
    if isinstance(exc, _CONNECT_FAILURES):
        reason = "connect time-out" if isinstance(exc, TimeoutError) else type(exc).__name__
        return RetryableError(
            f"DingTalk {what}: network error, could not connect ({reason}); nothing was sent",
            code="network",
        )
    if isinstance(exc, TimeoutError):
        return OutcomeUnknown(
            f"DingTalk {what}: no answer within {timeout:g}s after the request was sent "
            "(DingTalk may or may not have acted)",
            code="timeout",
        )
    if isinstance(
        exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | aiohttp.ClientPayloadError
    ):
        return OutcomeUnknown(
            f"DingTalk {what}: the connection dropped before the answer "
            f"({type(exc).__name__}; DingTalk may or may not have acted)",
            code="disconnected",
        )
    return RetryableError(f"DingTalk {what}: network error ({type(exc).__name__})", code="network")


def _redirected(
    what: str, response: aiohttp.ClientResponse, code: str = "redirect"
) -> FatalPlatformError:
    """A 3xx answer: an error, logged (redirects are never followed, see
    :func:`imrobots.platform.refuse_redirects`)."""
    message = redirect_message(
        f"DingTalk {what}", response.status, response.headers.get("Location")
    )
    log.warning("%s", message)
    return FatalPlatformError(message, code=code, status=response.status)


class DingTalkApi:
    """The OpenAPI client of one app.

    ``session`` is owned by the caller; ``endpoint`` is the OpenAPI base URL
    (``https://api.dingtalk.com``, or an emulator's), ``oapi_endpoint`` the base
    URL of the old-style API (``https://oapi.dingtalk.com``). ``timeout`` is how
    long an answer may take once a request is sent; connecting has as long again.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        endpoint: str,
        client_id: str,
        client_secret: Secret,
        timeout: float = 10.0,
        oapi_endpoint: str = "https://oapi.dingtalk.com",
    ) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/")
        self.oapi_endpoint = oapi_endpoint.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self.seconds = timeout
        self.timeout = aiohttp.ClientTimeout(total=2 * timeout, connect=timeout, sock_read=timeout)
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()
        self._headers: tuple[str, CIMultiDict[str]] | None = None
        self.token_fetches = 0
        """How many times a token was requested (for tests and metrics)."""
        self._worked = False
        """A token was obtained with these credentials once."""
        self._refused_since: float | None = None
        self._refusal: RetryableError | None = None
        self._refusal_until = 0.0

    def __repr__(self) -> str:
        return f"DingTalkApi(endpoint={self.endpoint!r}, client_id={self.client_id!r})"

    # ------------------------------------------------------------------ token
    async def access_token(self) -> str:
        """The cached token, fetched or refreshed when missing or about to expire."""
        token = self._token
        if token is not None and time.monotonic() < self._token_expires:
            return token
        async with self._token_lock:
            token = self._token
            if token is not None and time.monotonic() < self._token_expires:
                return token
            if self._refusal is not None and time.monotonic() < self._refusal_until:
                raise self._refusal
            return await self._fetch_token()

    def invalidate_token(self, token: str | None = None) -> None:
        """Forget the token (only if it is still ``token``, when given)."""
        if token is None or token == self._token:
            self._token = None
            self._token_expires = 0.0

    async def _fetch_token(self) -> str:
        what = "POST /v1.0/oauth2/accessToken"
        body = {"appKey": self.client_id, "appSecret": self._secret.get()}
        started = time.monotonic()
        try:
            status, answer, headers = await self._send(
                "POST", "/v1.0/oauth2/accessToken", body, what
            )
        except OutcomeUnknown as exc:
            # Fetching a token changes nothing: the call it was for was not sent yet.
            raise RetryableError(str(exc), code=exc.code) from None
        self.token_fetches += 1
        if status != 200 or not isinstance(answer, dict) or "accessToken" not in answer:
            error = classify(what, status, answer, headers=headers)
            if isinstance(error, RetryableError):
                raise error
            if self._worked:
                raise self._refused(error, status)
            raise FatalPlatformError(
                f"DingTalk refused the credentials of app {self.client_id!r}: "
                f"{error} (check client_id and client_secret)",
                code=error.code,
                status=status,
            )
        if self._refused_since is not None:
            log.warning(
                "DingTalk accepts the credentials of app %r again (refused for %.1fs)",
                self.client_id,
                time.monotonic() - self._refused_since,
            )
            self._refused_since = self._refusal = None
        self._worked = True
        token = str(answer["accessToken"])
        expire_in = answer.get("expireIn", 7200)
        lifetime = float(expire_in) if isinstance(expire_in, int | float) else 7200.0
        margin = min(TOKEN_MARGIN, lifetime / 2)
        self._token = token
        self._token_expires = started + lifetime - margin
        log.debug("got an access token for %s, valid %.0fs", self.client_id, lifetime)
        return token

    def _refused(self, error: PlatformError, status: int) -> PlatformError:
        """A refusal of credentials that worked before: DingTalk's passing fault (seen:
        400 ``invalidClientIdOrSecret`` for seconds). Retryable, logged once per streak;
        fatal again after :data:`REFUSAL_GIVE_UP` seconds."""
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
            log.error(
                "DingTalk refused the credentials of app %r that worked before (%s); "
                "taken for a passing fault: calls are retried (each answer up to its "
                "final-card deadline) until DingTalk accepts them again",
                self.client_id,
                error,
            )
        elif now - self._refused_since > REFUSAL_GIVE_UP:
            return FatalPlatformError(
                f"DingTalk refused the credentials of app {self.client_id!r} for "
                f"{now - self._refused_since:.0f}s: {error} (were client_id or "
                "client_secret changed?)",
                code=error.code,
                status=status,
            )
        refusal = RetryableError(
            f"DingTalk refused the credentials of app {self.client_id!r} that worked before "
            f"({error}); retrying",
            code=error.code,
            status=status,
        )
        self._refusal, self._refusal_until = refusal, now + REFUSAL_PAUSE
        return refusal

    # ------------------------------------------------------------------ calls
    async def _request(
        self,
        method: HttpMethod,
        url: str,
        what: str,
        *,
        data: bytes | aiohttp.FormData | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        try:
            async with self.session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            ) as response:
                if 300 <= response.status < 400:
                    raise _redirected(what, response)
                return response.status, await _read_body(response), response.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _transport_error(what, exc, self.seconds) from None

    async def _send(
        self,
        method: HttpMethod,
        path_or_url: str,
        body: Mapping[str, Any],
        what: str,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        url = path_or_url if "://" in path_or_url else self.endpoint + path_or_url
        all_headers = {**_JSON_HEADERS, **headers} if headers else _JSON_HEADERS
        data = dump_json(body)
        return await self._request(method, url, what, data=data, headers=all_headers)

    def _token_headers(self, token: str) -> CIMultiDict[str]:
        """The headers of a call with ``token``, made once per token (aiohttp takes a
        ``CIMultiDict`` as it is; a dict it converts on every request)."""
        cached = self._headers
        if cached is None or cached[0] != token:
            cached = self._headers = (
                token,
                CIMultiDict({**_JSON_HEADERS, "x-acs-dingtalk-access-token": token}),
            )
        return cached[1]

    async def call(
        self,
        method: HttpMethod,
        path: str,
        body: Mapping[str, Any],
        *,
        card_update: bool = False,
        card: bool = False,
    ) -> Any:
        """Call a token-protected route; return the JSON answer or raise (see :func:`classify`)."""
        what = f"{method} {path}"
        for attempt in (1, 2):
            token = await self.access_token()
            status, answer, headers = await self._request(
                method,
                path if "://" in path else self.endpoint + path,
                what,
                data=dump_json(body),
                headers=self._token_headers(token),
            )
            if 200 <= status < 300:
                return answer
            if _is_auth_error(status, answer):
                self.invalidate_token(token)
                if attempt == 1:
                    log.info("DingTalk refused the access token on %s; fetching a new one", what)
                    continue
                raise FatalPlatformError(
                    f"DingTalk {what} refused a fresh access token ({status}); "
                    "check the app's permissions",
                    code=str(answer.get("code")) if isinstance(answer, dict) else None,
                    status=status,
                )
            raise classify(
                what, status, answer, headers=headers, card_update=card_update, card=card
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def post_webhook(self, url: str, body: Mapping[str, Any]) -> Any:
        """POST to a message's sessionWebhook (no token). Returns the JSON answer.

        The caller checks the host first; only the host is named in errors
        (the URL carries the session's credential).
        """
        host = urlsplit(url).hostname or "?"
        what = f"sessionWebhook post to {host}"
        status, answer, headers = await self._send("POST", url, body, what)
        if status != 200:
            raise classify(what, status, answer, headers=headers)
        return answer

    async def upload_media(
        self, media_type: str, name: str, data: bytes, mime_type: str | None = None
    ) -> str:
        """``POST {oapi}/media/upload?access_token=..&type=..`` (multipart ``media``);
        returns the ``media_id``. The token rides in the query string: the URL is
        never logged or put in an error."""
        what = "POST /media/upload"
        for attempt in (1, 2):
            token = await self.access_token()
            form = aiohttp.FormData()
            form.add_field(
                "media", data, filename=name, content_type=mime_type or "application/octet-stream"
            )
            url = f"{self.oapi_endpoint}/media/upload"
            query = URL(url).with_query(access_token=token, type=media_type)
            status, answer, headers = await self._request("POST", str(query), what, data=form)
            errcode = answer.get("errcode", 0) if isinstance(answer, dict) else None
            if status == 200 and errcode == 0 and isinstance(answer, dict):
                media_id = answer.get("media_id")
                if isinstance(media_id, str) and media_id:
                    return media_id
            if errcode in OAPI_TOKEN_ERRCODES:
                self.invalidate_token(token)
                if attempt == 1:
                    continue
            if status != 200:
                raise classify(what, status, answer, headers=headers)
            errmsg = answer.get("errmsg", "") if isinstance(answer, dict) else ""
            raise FatalPlatformError(
                f"DingTalk {what} ({media_type} {name!r}, {len(data)} bytes) failed: "
                f"{errcode} {errmsg}".rstrip(),
                code=str(errcode),
                status=status,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        """GET a download URL (no token, no redirects followed); at most ``max_bytes``."""
        host = urlsplit(url).hostname or "?"
        what = f"download from {host}"
        try:
            async with self.session.get(
                url, timeout=self.timeout, allow_redirects=False
            ) as response:
                if response.status != 200:
                    if 300 <= response.status < 400:
                        raise _redirected(what, response, "download.redirect")
                    body = await _read_body(response)
                    raise classify(what, response.status, body, headers=response.headers)
                if (response.content_length or 0) > max_bytes:
                    raise FatalPlatformError(
                        f"DingTalk {what}: {response.content_length} bytes, more than "
                        f"the {max_bytes} allowed",
                        code="download.too_large",
                    )
                data = await response.content.read(max_bytes + 1)
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = _transport_error(what, exc, self.seconds)
            # a download changes nothing: whatever happened, it may be tried again
            raise RetryableError(str(error), code=error.code) from None
        if len(data) > max_bytes:
            raise FatalPlatformError(
                f"DingTalk {what}: more than the {max_bytes} bytes allowed",
                code="download.too_large",
            )
        return data
