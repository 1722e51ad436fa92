"""The emulator's HTTP/WebSocket surface (aiohttp routes).

- Stream gateway: ``POST /v1.0/gateway/connections/open`` and ``GET /connect?ticket=``.
- OpenAPI: ``POST /v1.0/oauth2/accessToken`` and the token-protected routes of
  :data:`.openapi.ROUTES`; unknown ``/v1.0/...`` paths answer 404.
- Old-style OpenAPI: ``POST /media/upload?access_token=...&type=...`` (multipart).
- sessionWebhook: ``POST /robot/sendBySession?session=...``.
- Control API under ``/_emulator/`` (JSON) and the ``/_emulator/events`` WebSocket;
  ``GET /_emulator/files/{token}`` serves the temporary download URLs that
  ``messageFiles/download`` hands out. Behind :func:`imrobots.emulation.control_guard`:
  Host and Origin checks, and ``control_token`` for its ``POST`` routes.

Every non-control HTTP call is recorded as an :class:`~.state.ApiCall`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import WSMsgType, web

from imrobots.emulation import control_guard, json_response
from imrobots.platform import LoneSurrogate, dump_json, load_json, parse_json_strict

from . import errors, frames
from .errors import ApiError
from .openapi import ROUTE_SCOPES, ROUTES, OpenApiContext, OpenApiHandler
from .state import ApiCall, MediaRecord, WebhookMessage, redact, to_json

if TYPE_CHECKING:
    from .emulator import DingTalkEmulator, StallStage, Withhold

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

logger = logging.getLogger(__name__)


# GUESS: 20000 bytes is the custom (group webhook) robot limit (460101, PROTOCOLS 2.6),
# assumed for the sessionWebhook and counted on the message's text (text.content,
# markdown.text, actionCard.text), not on the whole JSON body.
WEBHOOK_MAX_BYTES = 20_000
WEBHOOK_MSGTYPES = frozenset({"text", "markdown", "actionCard", "feedCard", "link"})
MEDIA_TYPES = frozenset({"image", "voice", "video", "file"})
"""``type`` values of ``media/upload``."""


def build_app(emu: DingTalkEmulator) -> web.Application:
    """The aiohttp application serving every emulated surface."""
    surface = _Surface(emu)
    control = _Control(emu)
    app = web.Application(
        client_max_size=64 * 1024 * 1024,
        middlewares=[control_guard(emu.control_token), _redirects(emu)],
    )
    router = app.router
    router.add_post("/v1.0/gateway/connections/open", surface.gateway_open)
    router.add_get("/connect", surface.stream_connect)
    router.add_post("/v1.0/oauth2/accessToken", surface.access_token)
    for method, path, name, handler in ROUTES:
        router.add_route(method, path, surface.openapi(name, handler))
    router.add_post("/robot/sendBySession", surface.session_webhook)
    router.add_post("/media/upload", surface.media_upload)
    control.register(router)
    router.add_route("*", "/v1.0/{tail:.*}", surface.unknown_api)
    return app


def _redirects(emu: DingTalkEmulator) -> Any:
    """Answer a request with a redirect when :meth:`DingTalkEmulator.redirect_requests`
    says so (recorded as a call with the note ``redirected``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = emu.take_redirect(request.path)
        if rule is None:
            return await handler(request)
        call = ApiCall(
            seq=emu.state.next_seq(),
            method=request.method,
            path=request.path,
            route="redirect",
            client_id=None,
            status=rule.status,
            error_code=None,
            latency=0.0,
            request=None,
            response=None,
            notes=[f"redirected: {rule.describe()}"],
        )
        emu.state.calls.append(call)
        emu.state.emit("call", call)
        return web.Response(status=rule.status, headers={"Location": rule.location})

    return middleware


async def _read_json(request: web.Request) -> tuple[bytes, Any, bool, LoneSurrogate | None]:
    """(raw body, parsed body or text, parsed as JSON?, the lone surrogate that refuses it).

    A body with a lone surrogate (``parse_json_strict``) is not taken (``False``); the body
    returned then has each one replaced by U+FFFD, so that it can be recorded and shown.
    """
    raw = await request.read()
    if not raw:
        return raw, None, False, None
    try:
        return raw, parse_json_strict(raw, where="body"), True, None
    except LoneSurrogate as exc:  # logged where it is the answer (_refusing)
        return raw, load_json(raw), False, exc
    except ValueError:
        return raw, raw.decode("utf-8", errors="replace")[:2000], False, None


def _refusing(request: web.Request, refused: LoneSurrogate) -> LoneSurrogate:
    """Log that ``request`` is refused for its lone surrogate (its answer says so)."""
    logger.warning("refused %s %s: %s", request.method, request.path, refused)
    return refused


class _Surface:
    """Routes a robot (or the official SDK) talks to."""

    def __init__(self, emu: DingTalkEmulator) -> None:
        self.emu = emu

    # -- helpers --

    def _record(
        self,
        request: web.Request,
        *,
        route: str,
        client_id: str | None,
        status: int,
        error_code: str | None,
        start: float,
        body: Any,
        response: Any,
        notes: list[str] | None = None,
    ) -> ApiCall:
        state = self.emu.state
        call = ApiCall(
            seq=state.next_seq(),
            method=request.method,
            path=request.path,
            route=route,
            client_id=client_id,
            status=status,
            error_code=error_code,
            latency=time.monotonic() - start,
            request=redact(body),
            response=response,
            notes=list(notes or []),
        )
        state.calls.append(call)
        state.emit("call", call)
        return call

    def _respond(
        self,
        request: web.Request,
        *,
        route: str,
        client_id: str | None,
        start: float,
        body: Any,
        result: dict[str, Any] | ApiError,
        notes: list[str] | None = None,
    ) -> web.Response:
        request_id = frames.new_request_id(self.emu.rng)
        if isinstance(result, ApiError):
            status, payload, code = result.status, result.body(request_id), result.code
        else:
            status, payload, code = 200, result, None
        self._record(
            request,
            route=route,
            client_id=client_id,
            status=status,
            error_code=code,
            start=start,
            body=body,
            response=payload,
            notes=notes,
        )
        return json_response(payload, status=status, headers={"x-acs-request-id": request_id})

    async def _latency(self) -> None:
        if self.emu.latency > 0:
            await asyncio.sleep(self.emu.latency)

    async def _withhold(self, request: web.Request, rule: Withhold | None) -> None:
        """The call took effect; now keep its answer from the client (see
        :meth:`DingTalkEmulator.withhold_responses`)."""
        if rule is None:
            return
        if rule.mode == "disconnect":
            if request.transport is not None:
                request.transport.abort()
            return
        await self.emu.hold(rule.seconds)

    # -- stream gateway --

    async def _stall(self, request: web.Request, stage: StallStage, start: float) -> bool:
        """Hold the request unanswered (until the emulator stops) if a stall applies."""
        rule = self.emu.take_stall(stage)
        if rule is None:
            return False
        route = "gateway.connections.open" if stage == "ticket" else "stream.connect"
        self._record(
            request,
            route=route,
            client_id=None,
            status=0,
            error_code=None,
            start=start,
            body=None,
            response=None,
            notes=[f"stalled: {rule.describe()}"],
        )
        await self.emu.hold(None)
        return True

    async def gateway_open(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        _, body, ok, refused = await _read_json(request)
        if await self._stall(request, "ticket", start):
            raise web.HTTPServiceUnavailable()  # the emulator stops: the answer never came
        await self._latency()
        notes: list[str] = []
        client_id: str | None = None
        result: dict[str, Any] | ApiError
        try:
            if refused is not None:
                raise errors.lone_surrogate(_refusing(request, refused))
            if not ok or not isinstance(body, dict):
                raise errors.missing_body()
            raw_id = body.get("clientId")
            app = self.emu.state.apps.get(raw_id) if isinstance(raw_id, str) else None
            if app is None or body.get("clientSecret") != app.client_secret:
                raise errors.auth_failed()
            client_id = app.client_id
            subscriptions = _subscriptions(body.get("subscriptions"), notes)
            ua = body.get("ua")
            local_ip = body.get("localIp")
            ticket = self.emu.new_ticket(
                app,
                subscriptions,
                ua if isinstance(ua, str) else None,
                local_ip if isinstance(local_ip, str) else None,
            )
            result = {"endpoint": self.emu.ws_endpoint, "ticket": ticket.ticket}
        except ApiError as exc:
            result = exc
        return self._respond(
            request,
            route="gateway.connections.open",
            client_id=client_id,
            start=start,
            body=body,
            result=result,
            notes=notes,
        )

    async def stream_connect(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        if await self._stall(request, "upgrade", start):
            raise web.HTTPServiceUnavailable()  # the emulator stops: the answer never came
        try:
            ticket = self.emu.take_ticket(request.query.get("ticket"))
        except ApiError as exc:
            return self._respond(
                request,
                route="stream.connect",
                client_id=None,
                start=start,
                body={"ticket": request.query.get("ticket")},
                result=exc,
            )
        silent = self.emu.take_stall("silent")
        ws = web.WebSocketResponse(autoping=silent is None, heartbeat=None, timeout=2.0)
        await ws.prepare(request)
        if silent is not None:
            # Upgraded, then nothing: no frames, no pongs, what was sent is never read.
            self._record(
                request,
                route="stream.connect",
                client_id=ticket.client_id,
                status=101,
                error_code=None,
                start=start,
                body={"ticket": ticket.ticket},
                response=None,
                notes=[f"stalled: {silent.describe()}"],
            )
            await self.emu.hold(None)
            return ws
        self._record(
            request,
            route="stream.connect",
            client_id=ticket.client_id,
            status=101,
            error_code=None,
            start=start,
            body={"ticket": ticket.ticket},
            response=None,
        )
        conn = self.emu.attach(ws, request.transport, ticket)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.emu.on_text(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.emu.state.emit("frame", None, problem="binary frame", size=len(msg.data))
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.emu.detach(conn, ws.close_code)
        return ws

    # -- OpenAPI --

    async def access_token(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        _, body, ok, refused = await _read_json(request)
        await self._latency()
        client_id: str | None = None
        route = "oauth2.accessToken"
        notes: list[str] = []
        result: dict[str, Any] | ApiError
        try:
            if refused is not None:
                raise errors.lone_surrogate(_refusing(request, refused))
            if not ok or not isinstance(body, dict):
                raise errors.missing_body()
            key = body.get("appKey")
            app = self.emu.state.apps.get(key) if isinstance(key, str) else None
            if app is None or body.get("appSecret") != app.client_secret:
                raise errors.invalid_client()
            if self.emu.refusing_credentials:
                notes.append("refused: refuse_credentials fault")
                raise errors.invalid_client()
            client_id = app.client_id
            if not self.emu.admit(client_id, route):
                raise errors.qps_limited()
            fault = self.emu.roll_failure()
            if fault is not None:
                raise fault
            token = self.emu.issue_token(app)
            result = {"accessToken": token.token, "expireIn": self.emu.token_lifetime}
        except ApiError as exc:
            result = exc
        rule = None if isinstance(result, ApiError) else self.emu.take_withhold(route)
        response = self._respond(
            request,
            route=route,
            client_id=client_id,
            start=start,
            body=body,
            result=result,
            notes=notes + ([f"response withheld ({rule.describe()})"] if rule else []),
        )
        await self._withhold(request, rule)
        return response

    def openapi(self, route: str, handler: OpenApiHandler) -> Handler:
        """Wrap a token-protected route: latency, auth, permission, QPS, faults, body,
        record, withheld answers."""
        scope = ROUTE_SCOPES.get(route)

        async def handle(request: web.Request) -> web.StreamResponse:
            start = time.monotonic()
            _, body, ok, refused = await _read_json(request)
            await self._latency()
            emu = self.emu
            client_id = emu.token_client(request.headers.get("x-acs-dingtalk-access-token"))
            ctx: OpenApiContext | None = None
            result: dict[str, Any] | ApiError
            try:
                if client_id is None:
                    raise errors.invalid_token(emu.invalid_token_status)
                if scope is not None and scope in emu.state.apps[client_id].denied_scopes:
                    raise errors.permission_denied(scope)
                if not emu.admit(client_id, route):
                    raise errors.qps_limited()
                fault = emu.roll_failure()
                if fault is not None:
                    raise fault
                if refused is not None:
                    raise errors.lone_surrogate(_refusing(request, refused))
                if not ok or not isinstance(body, dict):
                    raise errors.missing_body()
                ctx = OpenApiContext(
                    emulator=emu, app=emu.state.apps[client_id], body=body, route=route
                )
                result = handler(ctx)
            except ApiError as exc:
                result = exc
            notes = list(ctx.notes) if ctx is not None else []
            rule = None if isinstance(result, ApiError) else emu.take_withhold(route)
            if rule is not None:
                notes.append(f"response withheld ({rule.describe()})")
            response = self._respond(
                request,
                route=route,
                client_id=client_id,
                start=start,
                body=body,
                result=result,
                notes=notes,
            )
            await self._withhold(request, rule)
            return response

        return handle

    async def media_upload(self, request: web.Request) -> web.StreamResponse:
        """``POST /media/upload?access_token=...&type=...`` (old-style API: HTTP 200 with
        ``errcode``; multipart field ``media``)."""
        start = time.monotonic()
        route = "media.upload"
        emu = self.emu
        await self._latency()
        client_id = emu.token_client(request.query.get("access_token"))
        media_type = request.query.get("type", "")
        summary: dict[str, Any] = {"type": media_type}
        result: dict[str, Any]
        rule: Withhold | None = None
        if client_id is None:
            result = errors.OAPI_INVALID_TOKEN
        elif media_type not in MEDIA_TYPES:
            result = errors.OAPI_BAD_MEDIA_TYPE
        else:
            field = None
            if request.content_type.startswith("multipart/"):
                form = await request.post()
                field = form.get("media")
            if not isinstance(field, web.FileField):
                result = errors.OAPI_NO_MEDIA
            else:
                data = field.file.read()
                summary.update(name=field.filename, size=len(data))
                if len(data) > emu.media_limits.get(media_type, 0) or len(data) <= 5:
                    # GUESS: "all files must be larger than 5 bytes" is WeCom's rule;
                    # DingTalk's lower bound is not documented.
                    result = errors.OAPI_MEDIA_TOO_LARGE
                else:
                    media = MediaRecord(
                        media_id="@" + frames.new_b64(emu.rng, 18).replace("/", "_"),
                        client_id=client_id,
                        type=media_type,
                        name=field.filename,
                        size=len(data),
                        mime_type=field.content_type,
                        data=data,
                    )
                    emu.state.media[media.media_id] = media
                    emu.state.emit("media", media)
                    result = {
                        "errcode": 0,
                        "errmsg": "ok",
                        "media_id": media.media_id,
                        "created_at": frames.now_ms(),
                        "type": media_type,
                    }
                    rule = emu.take_withhold(route)
        notes = [f"response withheld ({rule.describe()})"] if rule is not None else []
        errcode = int(result["errcode"])
        self._record(
            request,
            route=route,
            client_id=client_id,
            status=200,
            error_code=None if errcode == 0 else str(errcode),
            start=start,
            body=summary,
            response=result,
            notes=notes,
        )
        response = json_response(dict(result))
        await self._withhold(request, rule)
        return response

    async def unknown_api(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        _, body, _, _ = await _read_json(request)
        client_id = self.emu.token_client(request.headers.get("x-acs-dingtalk-access-token"))
        return self._respond(
            request,
            route="unknown",
            client_id=client_id,
            start=start,
            body=body,
            result=errors.api_not_found(),
        )

    # -- sessionWebhook --

    async def session_webhook(self, request: web.Request) -> web.StreamResponse:
        start = time.monotonic()
        _, body, ok, refused = await _read_json(request)
        token = request.query.get("session", "")
        session = self.emu.state.sessions.get(token)
        if session is None or session.expires_at <= time.monotonic():
            result = errors.WEBHOOK_SESSION_EXPIRED
        elif refused is not None:
            result = errors.webhook_lone_surrogate(_refusing(request, refused))
        elif not ok or not isinstance(body, dict) or not _valid_webhook_body(body):
            result = errors.WEBHOOK_BAD_BODY
        else:
            result = errors.WEBHOOK_OK
        msgtype, text, title, at_ids = _webhook_summary(body)
        limit = self.emu.webhook_text_limit
        if result is errors.WEBHOOK_OK and len((text or "").encode("utf-8")) > limit:
            result = errors.WEBHOOK_TOO_LONG
        rule = self.emu.take_withhold("sessionWebhook") if result is errors.WEBHOOK_OK else None
        record = WebhookMessage(
            session=token,
            client_id=session.client_id if session else None,
            msg_id=session.msg_id if session else None,
            conversation_id=session.conversation_id if session else None,
            conversation_type=session.conversation_type if session else None,
            msgtype=msgtype,
            text=text,
            title=title,
            at_user_ids=at_ids,
            body=body,
            errcode=int(result["errcode"]),
            errmsg=str(result["errmsg"]),
        )
        self.emu.state.webhook_messages.append(record)
        self.emu.state.emit("webhook", record)
        self._record(
            request,
            route="sessionWebhook",
            client_id=record.client_id,
            status=200,
            error_code=None if record.errcode == 0 else str(record.errcode),
            start=start,
            body=body,
            response=result,
            notes=[f"response withheld ({rule.describe()})"] if rule is not None else None,
        )
        response = json_response(dict(result))
        await self._withhold(request, rule)
        return response


def _subscriptions(value: Any, notes: list[str]) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        if value is not None:
            notes.append("subscriptions is not a list: ignored")
        return []
    out: list[dict[str, Any]] = []
    for item in value:
        if (
            isinstance(item, dict)
            and item.get("type") in ("EVENT", "CALLBACK", "SYSTEM")
            and isinstance(item.get("topic"), str)
        ):
            out.append({"type": item["type"], "topic": item["topic"]})
        else:
            notes.append(f"invalid subscription ignored: {item!r}")
    return out


def _valid_webhook_body(body: dict[str, Any]) -> bool:
    msgtype = body.get("msgtype")
    if msgtype not in WEBHOOK_MSGTYPES:
        return False
    part = body.get(msgtype)
    if not isinstance(part, dict):
        return False
    if msgtype == "text":
        return isinstance(part.get("content"), str)
    if msgtype == "markdown":
        return isinstance(part.get("text"), str) and isinstance(part.get("title"), str)
    return True


def _webhook_summary(body: Any) -> tuple[str | None, str | None, str | None, list[str]]:
    if not isinstance(body, dict):
        return None, None, None, []
    msgtype = body.get("msgtype") if isinstance(body.get("msgtype"), str) else None
    part = body.get(msgtype) if msgtype else None
    text: str | None = None
    title: str | None = None
    if isinstance(part, dict):
        raw_text = part.get("content") if msgtype == "text" else part.get("text")
        text = raw_text if isinstance(raw_text, str) else None
        raw_title = part.get("title")
        title = raw_title if isinstance(raw_title, str) else None
    at = body.get("at")
    at_ids: list[str] = []
    if isinstance(at, dict) and isinstance(at.get("atUserIds"), list):
        at_ids = [str(u) for u in at["atUserIds"] if u is not None]
    return msgtype, text, title, at_ids


# --- control API ------------------------------------------------------------------


class _BadRequest(Exception):
    pass


_ArgSpec = dict[str, tuple[type | tuple[type, ...], bool]]


def _args(body: Any, spec: _ArgSpec) -> dict[str, Any]:
    """Check a control request body against ``{name: (types, required)}``."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise _BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(spec)}")
    out: dict[str, Any] = {}
    for name, (types, required) in spec.items():
        value = body.get(name)
        if value is None:
            if required:
                raise _BadRequest(f"missing required field {name!r}")
            continue
        allowed = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if not ok:
            names = " or ".join(t.__name__ for t in allowed)
            raise _BadRequest(f"field {name!r} must be {names}")
        out[name] = value
    return out


_NUMBER = (int, float)

_MESSAGE_SPEC: _ArgSpec = {
    "client_id": (str, True),
    "text": (str, False),
    "conversation_type": (str, False),
    "conversation_id": (str, False),
    "conversation_title": (str, False),
    "sender_staff_id": (str, False),
    "sender_nick": (str, False),
    "at_robot": (bool, False),
    "msgtype": (str, False),
    "content": (dict, False),
    "msg_id": (str, False),
    "create_at_ms": (int, False),
    "replied_msg": (dict, False),
}

_BUTTON_SPEC: _ArgSpec = {
    "client_id": (str, True),
    "card_id": (str, True),
    "action_id": (str, True),
    "params": (dict, False),
    "user_id": (str, False),
}

_EVENT_SPEC: _ArgSpec = {
    "client_id": (str, True),
    "event_type": (str, True),
    "data": (dict, False),
    "event_id": (str, False),
}

_APP_SPEC: _ArgSpec = {
    "client_id": (str, True),
    "client_secret": (str, True),
    "robot_code": (str, False),
}

_FAULT_SPECS: dict[str, _ArgSpec] = {
    "drop_connections": {"client_id": (str, False)},
    "latency": {"seconds": (_NUMBER, True)},
    "failure_rate": {"rate": (_NUMBER, True), "kind": (str, False)},
    "expire_tokens": {},
    "disconnect": {
        "client_id": (str, True),
        "connection_id": (str, False),
        "reason": (str, False),
    },
    "ping": {"client_id": (str, True), "connection_id": (str, False), "opaque": (str, False)},
    "withhold": {
        "route": (str, False),
        "count": (int, False),
        "seconds": (_NUMBER, False),
        "mode": (str, False),
    },
    "permission": {"client_id": (str, True), "scope": (str, True), "granted": (bool, True)},
    "stall": {"stage": (str, False), "count": (int, False)},
    "refuse_credentials": {"seconds": (_NUMBER, True)},
    "connections": {"fault": (str, True), "client_id": (str, False)},
    "redirect": {
        "path": (str, True),
        "location": (str, True),
        "count": (int, False),
        "status": (int, False),
    },
}

_FILE_SPEC: _ArgSpec = {
    "client_id": (str, True),
    "kind": (str, True),
    "data_base64": (str, True),
    "name": (str, False),
    "mime_type": (str, False),
}


class _Control:
    """``/_emulator/...``: drive and inspect the emulator over HTTP."""

    def __init__(self, emu: DingTalkEmulator) -> None:
        self.emu = emu

    def register(self, router: web.UrlDispatcher) -> None:
        wrap = self._wrap
        router.add_get("/_emulator", wrap(self.summary))
        router.add_get("/_emulator/", wrap(self.summary))
        router.add_get("/_emulator/apps", wrap(self.list_apps))
        router.add_post("/_emulator/apps", wrap(self.add_app))
        router.add_post("/_emulator/messages", wrap(self.push_message))
        router.add_post("/_emulator/buttons", wrap(self.press_button))
        router.add_post("/_emulator/app_events", wrap(self.push_event))
        router.add_post("/_emulator/faults", wrap(self.faults))
        router.add_get("/_emulator/calls", wrap(self._lister(lambda: self.emu.calls)))
        router.add_get(
            "/_emulator/cards", wrap(self._lister(lambda: list(self.emu.cards.values())))
        )
        router.add_get("/_emulator/acks", wrap(self._lister(lambda: list(self.emu.acks.values()))))
        router.add_get("/_emulator/webhooks", wrap(self._lister(lambda: self.emu.webhook_messages)))
        router.add_get("/_emulator/sent", wrap(self._lister(lambda: self.emu.sent_messages)))
        router.add_get("/_emulator/pushes", wrap(self._lister(lambda: self.emu.pushes)))
        router.add_get("/_emulator/connections", wrap(self._lister(lambda: self.emu.connections)))
        router.add_post("/_emulator/files", wrap(self.add_file))
        files = self._lister(lambda: list(self.emu.files.values()))
        router.add_get("/_emulator/files", wrap(files))
        media = self._lister(lambda: list(self.emu.media.values()))
        router.add_get("/_emulator/media", wrap(media))
        router.add_get("/_emulator/files/{token}", self.file)
        router.add_get("/_emulator/events", self.events)

    def _wrap(self, fn: Callable[[web.Request], Awaitable[Any]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                result = await fn(request)
            except (_BadRequest, ValueError) as exc:
                return json_response({"error": str(exc)}, status=400)
            return json_response(to_json(result))

        return handle

    @staticmethod
    async def _body(request: web.Request) -> Any:
        _, body, ok, refused = await _read_json(request)
        if refused is not None:
            raise _BadRequest(str(_refusing(request, refused)))
        if body is not None and not ok:
            raise _BadRequest("the body is not valid JSON")
        return body

    def _lister(self, items: Callable[[], Any]) -> Callable[[web.Request], Awaitable[Any]]:
        async def handle(request: web.Request) -> Any:
            client_id = request.query.get("client_id")
            values = list(items())
            if client_id:
                values = [v for v in values if getattr(v, "client_id", None) == client_id]
            return values

        return handle

    async def summary(self, request: web.Request) -> Any:
        emu = self.emu
        return {
            "base_url": emu.base_url,
            "ws_endpoint": emu.ws_endpoint,
            "apps": sorted(emu.apps),
            "live_connections": len(emu.live_connections()),
            "calls": len(emu.calls),
            "cards": len(emu.cards),
            "webhook_messages": len(emu.webhook_messages),
            "latency": emu.latency,
            "failure_rate": emu.failure_rate,
            "failure_kind": emu.failure_kind,
        }

    async def list_apps(self, request: web.Request) -> Any:
        return list(self.emu.apps.values())

    async def add_app(self, request: web.Request) -> Any:
        args = _args(await self._body(request), _APP_SPEC)
        return self.emu.add_app(
            args["client_id"], args["client_secret"], robot_code=args.get("robot_code")
        )

    async def push_message(self, request: web.Request) -> Any:
        args = _args(await self._body(request), _MESSAGE_SPEC)
        client_id = args.pop("client_id")
        record = await self.emu.push_message(client_id, **args)
        return {**to_json(record), "ack": to_json(record.ack)}

    async def press_button(self, request: web.Request) -> Any:
        args = _args(await self._body(request), _BUTTON_SPEC)
        client_id = args.pop("client_id")
        record = await self.emu.press_button(client_id, **args)
        return {**to_json(record), "ack": to_json(record.ack)}

    async def push_event(self, request: web.Request) -> Any:
        args = _args(await self._body(request), _EVENT_SPEC)
        record = await self.emu.push_event(
            args["client_id"], args["event_type"], args.get("data"), event_id=args.get("event_id")
        )
        return {**to_json(record), "ack": to_json(record.ack)}

    async def faults(self, request: web.Request) -> Any:
        body = await self._body(request)
        if not isinstance(body, dict) or not isinstance(body.get("action"), str):
            raise _BadRequest(f"'action' is required, one of {sorted(_FAULT_SPECS)}")
        body = dict(body)
        action = body.pop("action")
        spec = _FAULT_SPECS.get(action)
        if spec is None:
            raise _BadRequest(f"unknown action {action!r}; one of {sorted(_FAULT_SPECS)}")
        args = _args(body, spec)
        emu = self.emu
        if action == "drop_connections":
            return {"dropped": await emu.drop_connections(args.get("client_id"))}
        if action == "latency":
            emu.set_latency(float(args["seconds"]))
            return {"latency": emu.latency}
        if action == "failure_rate":
            kind = args.get("kind", "5xx")
            if kind not in ("5xx", "qps"):
                raise _BadRequest("kind must be '5xx' or 'qps'")
            emu.set_failure_rate(float(args["rate"]), kind=kind)
            return {"failure_rate": emu.failure_rate, "kind": emu.failure_kind}
        if action == "expire_tokens":
            emu.expire_tokens()
            return {"expired": True}
        if action == "withhold":
            mode = args.get("mode", "timeout")
            if mode not in ("timeout", "disconnect"):
                raise _BadRequest("mode must be 'timeout' or 'disconnect'")
            seconds = args.get("seconds")
            rule = emu.withhold_responses(
                args.get("route"),
                count=int(args.get("count", 1)),
                seconds=float(seconds) if seconds is not None else None,
                mode=mode,
            )
            return {"withhold": rule.describe()}
        if action == "stall":
            stage = args.get("stage", "upgrade")
            if stage not in ("ticket", "upgrade", "silent"):
                raise _BadRequest("stage must be 'ticket', 'upgrade' or 'silent'")
            stall = emu.stall_connections(stage=stage, count=int(args.get("count", 1)))
            return {"stall": stall.describe()}
        if action == "refuse_credentials":
            emu.refuse_credentials(float(args["seconds"]))
            return {"refusing": emu.refusing_credentials}
        if action == "connections":
            if args["fault"] not in ("muted", "blackhole"):
                raise _BadRequest("fault must be 'muted' or 'blackhole'")
            return {"affected": emu.fault_connections(args["fault"], args.get("client_id"))}
        if action == "redirect":
            status = int(args.get("status", 307))
            if not 300 <= status < 400:
                raise _BadRequest("status must be a 3xx")
            redirect = emu.redirect_requests(
                args["path"], args["location"], count=int(args.get("count", 1)), status=status
            )
            return {"redirect": redirect.describe()}
        if action == "permission":
            if args["granted"]:
                emu.grant_permission(args["client_id"], args["scope"])
            else:
                emu.revoke_permission(args["client_id"], args["scope"])
            return {"denied_scopes": sorted(emu.apps[args["client_id"]].denied_scopes)}
        if action == "disconnect":
            ids = await emu.send_system(
                args["client_id"],
                "disconnect",
                connection_id=args.get("connection_id"),
                reason=args.get("reason", "persistent connection is timeout"),
            )
            return {"message_ids": ids}
        ids = await emu.send_system(
            args["client_id"],
            "ping",
            connection_id=args.get("connection_id"),
            opaque=args.get("opaque"),
        )
        return {"message_ids": ids}

    async def add_file(self, request: web.Request) -> Any:
        args = _args(await self._body(request), _FILE_SPEC)
        try:
            data = base64.b64decode(args["data_base64"], validate=True)
        except binascii.Error:
            raise _BadRequest("data_base64 is not base64") from None
        return self.emu.add_file(
            args["client_id"],
            data,
            kind=args["kind"],
            name=args.get("name"),
            mime_type=args.get("mime_type"),
        )

    async def file(self, request: web.Request) -> web.StreamResponse:
        """A temporary download URL from ``messageFiles/download``."""
        stored = self.emu.file_for_token(request.match_info["token"])
        if stored is None:
            # GUESS: an OSS-style 403 for an expired or unknown signed URL.
            return web.Response(status=403, text="AccessDenied: Request has expired.")
        stored.downloads += 1
        self.emu.state.emit("download", stored)
        headers = {}
        if stored.name:
            headers["Content-Disposition"] = f'attachment; filename="{quote(stored.name)}"'
        return web.Response(body=stored.data, content_type=stored.mime_type, headers=headers)

    async def events(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=None, timeout=2.0)
        await ws.prepare(request)
        queue = self.emu.subscribe()
        self.emu.event_sockets.add(ws)

        async def pump() -> None:
            while True:
                event = await queue.get()
                # dump_json writes a lone surrogate (one the emulator itself sent, e.g. a
                # send_raw_frame opaque echoed back) as its escape: UTF-8 carries the text
                await ws.send_str(dump_json(event).decode())

        hello = {"kind": "hello", "summary": await self.summary(request)}
        await ws.send_str(dump_json(hello).decode())
        sender = asyncio.get_running_loop().create_task(pump())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self.emu.unsubscribe(queue)
            self.emu.event_sockets.discard(ws)
        return ws
