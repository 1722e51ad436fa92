"""The emulator's HTTP/WebSocket surface (aiohttp routes).

- Long connection: ``POST /callback/ws/endpoint`` (PROTOCOLS 3.1) and ``GET /ws``, the
  binary protobuf WebSocket (PROTOCOLS 3.2-3.4); beyond ``max_connections`` per app
  the handshake is refused with ``handshake-status: 514`` and
  ``handshake-autherrcode: 1000040350``.
- OpenAPI (PROTOCOLS 3.8): ``POST /open-apis/auth/v3/tenant_access_token/internal``,
  ``GET /open-apis/bot/v3/info``, ``POST /open-apis/im/v1/messages``,
  ``POST .../messages/:id/reply``, ``PATCH``/``GET .../messages/:id``,
  ``GET .../messages/:id/resources/:key``, ``POST /open-apis/im/v1/images`` and
  ``/files`` (multipart), ``POST /open-apis/cardkit/v1/cards``, ``PUT .../cards/:id``,
  ``PATCH .../cards/:id/settings``, ``PUT .../cards/:id/elements/:element_id/content``.
- HTTP callback mode: :func:`post_callback` POSTs events to an app's callback URL,
  encrypted with its ``encrypt_key`` (AES-256-CBC, key SHA-256 of the encrypt key, IV
  first, base64) and signed (``X-Lark-Signature`` = SHA-256 of timestamp + nonce +
  encrypt key + body); :func:`verify_url` sends the ``url_verification`` challenge
  (encrypted like events, unsigned: UNCONFIRMED whether Feishu signs it).
  UNCONFIRMED beyond what lark-oapi's ``EventDispatcherHandler`` checks. The
  encryption here is written against pycryptodome directly, not lark-oapi, so that
  the robot's decryption (lark-oapi's ``AESCipher``) is checked against an
  independent implementation.

Every OpenAPI call is recorded (:meth:`FeishuEmulator.record_call`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from imrobots.emulation import control_guard
from imrobots.platform import LoneSurrogate, parse_json_strict

from .errors import ApiError
from .frames import CONTROL, DATA, FrameError, decode_frame, encode_frame

if TYPE_CHECKING:
    from .emulator import Delivery, FeishuEmulator
    from .state import App

__all__ = ["encrypt", "make_app", "post_callback", "sign", "verify_url"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger(__name__)
EMULATOR: web.AppKey[FeishuEmulator] = web.AppKey("feishu_emulator")


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def make_app(emu: FeishuEmulator) -> web.Application:
    app = web.Application(
        client_max_size=64 * 1024 * 1024, middlewares=[control_guard(emu.control_token)]
    )
    app[EMULATOR] = emu

    def api(
        name: str, func: Callable[[FeishuEmulator, App, web.Request], Awaitable[Any]]
    ) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            started = time.monotonic()
            status, code = 200, 0
            try:
                if emu.latency:
                    await asyncio.sleep(emu.latency)
                app_ = emu.app_for_token(request.headers.get("Authorization"))
                emu.check_limits(app_, name)
                result = await func(emu, app_, request)
                response = (
                    result
                    if isinstance(result, web.StreamResponse)
                    else _json({"code": 0, "msg": "success", "data": result or {}})
                )
                status = response.status
                if emu.lose_answer() and request.transport is not None:
                    request.transport.abort()  # it acted; the answer never arrives
                return response
            except ApiError as exc:
                status, code = exc.status, exc.code
                return _json(exc.body(), exc.status, exc.headers)
            finally:
                emu.record_call(request.method, request.path, status, code, started)

        return handler

    async def token(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            body = await _read_body(request)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            app_ = emu.check_secret(str(body.get("app_id")), str(body.get("app_secret")))
            value, expire = emu.issue_token(app_)
            emu.record_call(request.method, request.path, 200, 0, started)
            return _json({"code": 0, "msg": "ok", "tenant_access_token": value, "expire": expire})
        except (_Refused, ApiError, ValueError) as exc:
            if isinstance(exc, _Refused):
                error = exc.error
            else:
                error = exc if isinstance(exc, ApiError) else ApiError.bad_request("invalid body")
            emu.record_call(request.method, request.path, error.status, error.code, started)
            return _json(error.body(), error.status)

    async def endpoint(request: web.Request) -> web.StreamResponse:
        try:
            body = await _read_body(request)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            app_ = emu.check_secret(str(body.get("AppID")), str(body.get("AppSecret")))
        except _Refused as exc:
            return _json(exc.error.body(), exc.error.status)
        except (ApiError, ValueError):
            # UNCONFIRMED: the code for wrong credentials (any non-0/1/1000040343 code
            # makes lark-oapi give up, PROTOCOLS 3.1).
            return _json({"code": 1000040351, "msg": "app credential invalid"})
        return _json({"code": 0, "msg": "ok", "data": emu.endpoint(app_)})

    async def websocket(request: web.Request) -> web.StreamResponse:
        app_id = request.query.get("app_id", "")
        device = request.query.get("device_id")
        service = request.query.get("service_id", "0")
        if app_id not in emu.apps or not device:
            return web.Response(
                status=403, headers={"handshake-status": "403", "handshake-msg": "forbidden"}
            )
        if len(emu.live(app_id)) >= emu.max_connections:
            return web.Response(
                status=514,
                headers={
                    "handshake-status": "514",
                    "handshake-msg": "exceeded connection limit",
                    "handshake-autherrcode": "1000040350",
                },
            )
        from .emulator import Connection

        transport = request.transport
        ws = web.WebSocketResponse(autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = Connection(
            id=device + secrets.token_hex(2),
            app_id=app_id,
            service_id=int(service),
            ws=ws,
            transport=transport,
        )
        emu.attach(conn)
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue  # the protocol is binary frames only
                try:
                    frame = decode_frame(msg.data)
                except FrameError:
                    continue
                if frame.method == CONTROL and frame.header("type") == "ping":
                    if not conn.muted:
                        await ws.send_bytes(encode_frame(emu.pong(conn, frame)))
                elif frame.method == DATA:
                    emu.on_response(frame)
        finally:
            emu.detach(conn)
        return ws

    async def bot_info(request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            app_ = emu.app_for_token(request.headers.get("Authorization"))
        except ApiError as exc:
            emu.record_call(request.method, request.path, exc.status, exc.code, started)
            return _json(exc.body(), exc.status)
        emu.record_call(request.method, request.path, 200, 0, started)
        bot = {"activate_status": 2, "app_name": app_.bot_name, "open_id": app_.bot_open_id}
        return _json({"code": 0, "msg": "ok", "bot": bot})

    async def send(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        body = await _body(request)
        record = emu.api_send(
            app_,
            receive_id_type=request.query.get("receive_id_type", ""),
            body=body,
            api="im.message.create",
        )
        return _message_data(record)

    async def reply(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        record = emu.api_reply(app_, request.match_info["message_id"], await _body(request))
        return _message_data(record)

    async def patch(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        emu.api_patch(app_, request.match_info["message_id"], await _body(request))
        return {}

    async def get_message(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        return emu.api_get_message(app_, request.match_info["message_id"])

    async def resource(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        if emu.resource_redirect is not None:  # a fault: the download would leave the domain
            return web.Response(status=302, headers={"Location": emu.resource_redirect})
        found = emu.api_resource(
            app_,
            request.match_info["message_id"],
            request.match_info["key"],
            request.query.get("type", ""),
        )
        name = found.name or found.key
        return web.Response(
            body=found.data,
            content_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def upload(kind: str, request: web.Request) -> Any:
        form = await request.post()
        field = form.get("image" if kind == "image" else "file")
        if not isinstance(field, web.FileField):
            raise ApiError.bad_request(f"multipart field {kind!r} is required")
        data = field.file.read()
        name = form.get("file_name")  # images keep no name on Feishu
        return emu.api_upload(kind, data, str(name) if name and kind == "file" else None)

    async def image(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        return {"image_key": (await upload("image", request)).key}

    async def file(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        return {"file_key": (await upload("file", request)).key}

    async def card_create(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        return {"card_id": emu.api_card_create(app_, await _body(request)).card_id}

    async def card_update(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        emu.api_card_update(app_, request.match_info["card_id"], await _body(request))
        return {}

    async def card_settings(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        emu.api_card_settings(app_, request.match_info["card_id"], await _body(request))
        return {}

    async def element_content(emu: FeishuEmulator, app_: App, request: web.Request) -> Any:
        emu.api_element_content(
            app_,
            request.match_info["card_id"],
            request.match_info["element_id"],
            await _body(request),
        )
        return {}

    async def state(request: web.Request) -> web.StreamResponse:
        return _json(
            {"messages": [emu.message_view(m) for m in emu.messages.values()]},
        )

    base = "/open-apis"
    app.router.add_post("/callback/ws/endpoint", endpoint)
    app.router.add_get("/ws", websocket)
    app.router.add_post(f"{base}/auth/v3/tenant_access_token/internal", token)
    app.router.add_get(f"{base}/bot/v3/info", bot_info)
    app.router.add_post(f"{base}/im/v1/messages", api("im.message.create", send))
    app.router.add_post(
        f"{base}/im/v1/messages/{{message_id}}/reply", api("im.message.reply", reply)
    )
    app.router.add_patch(f"{base}/im/v1/messages/{{message_id}}", api("im.message.patch", patch))
    app.router.add_get(f"{base}/im/v1/messages/{{message_id}}", api("im.message.get", get_message))
    app.router.add_get(
        f"{base}/im/v1/messages/{{message_id}}/resources/{{key}}",
        api("im.message.resource", resource),
    )
    app.router.add_post(f"{base}/im/v1/images", api("im.image.create", image))
    app.router.add_post(f"{base}/im/v1/files", api("im.file.create", file))
    app.router.add_post(f"{base}/cardkit/v1/cards", api("cardkit.card.create", card_create))
    app.router.add_put(
        f"{base}/cardkit/v1/cards/{{card_id}}", api("cardkit.card.update", card_update)
    )
    app.router.add_patch(
        f"{base}/cardkit/v1/cards/{{card_id}}/settings", api("cardkit.card.settings", card_settings)
    )
    app.router.add_put(
        f"{base}/cardkit/v1/cards/{{card_id}}/elements/{{element_id}}/content",
        api("cardkit.card_element.content", element_content),
    )
    app.router.add_get("/_emulator/state", state)
    return app


class _Refused(Exception):
    """A request refused before its route looked at it: ``error`` is the answer."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.msg)
        self.error = error


async def _read_body(request: web.Request) -> Any:
    """The JSON body of a client's request. Raises :class:`_Refused` (230001) for one
    holding a lone surrogate (logged), ``ValueError`` for one that is not JSON."""
    try:
        return parse_json_strict(await request.read(), where="body")
    except LoneSurrogate as exc:
        log.warning("refused %s %s: %s", request.method, request.path, exc)
        raise _Refused(ApiError.lone_surrogate(exc)) from None


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await _read_body(request)
    except _Refused as exc:
        raise exc.error from None
    except ValueError:
        raise ApiError.bad_request("the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError.bad_request("the body is not a JSON object")
    return body


def _message_data(record: Any) -> dict[str, Any]:
    return {
        "message_id": record.message_id,
        "root_id": record.root_id or "",
        "parent_id": record.parent_id or "",
        "thread_id": record.thread_id or "",
        "msg_type": record.msg_type,
        "create_time": str(int(record.created * 1000)),
        "update_time": str(int(record.updated * 1000)),
        "deleted": False,
        "updated": False,
        "chat_id": record.chat_id,
        "sender": {"id": record.app_id, "id_type": "app_id", "sender_type": "app"},
        "body": {"content": json.dumps(record.content, ensure_ascii=False)},
    }


# ---------------------------------------------------------------------- callback mode
def encrypt(encrypt_key: str, plain: bytes) -> str:
    """Feishu's event encryption: AES-256-CBC, key = SHA-256(encrypt_key), random IV
    prepended, PKCS#7, base64."""
    from Crypto.Cipher import AES  # pycryptodome, which lark-oapi installs

    key = hashlib.sha256(encrypt_key.encode()).digest()
    iv = os.urandom(16)
    pad = 16 - len(plain) % 16
    cipher = AES.new(key, AES.MODE_CBC, iv)
    return base64.b64encode(iv + cipher.encrypt(plain + bytes([pad]) * pad)).decode()


def sign(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """``X-Lark-Signature``: hex SHA-256 of timestamp + nonce + encrypt key + body."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()


def _callback_body(
    app: App, payload: bytes, *, signed: bool = True
) -> tuple[bytes, dict[str, str]]:
    headers = {"Content-Type": "application/json"}
    if not app.encrypt_key:
        return payload, headers
    body = json.dumps({"encrypt": encrypt(app.encrypt_key, payload)}).encode()
    if not signed:
        return body, headers
    timestamp, nonce = str(int(time.time())), secrets.token_hex(8)
    headers.update(
        {
            "X-Lark-Request-Timestamp": timestamp,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": sign(timestamp, nonce, app.encrypt_key, body),
        }
    )
    return body, headers


def _loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the emulator posts callbacks to loopback URLs only, not {host!r}")


async def post_callback(emu: FeishuEmulator, app: App, delivery: Delivery) -> dict[str, Any] | None:
    """POST an event to the app's callback URL; the answer as a response frame would
    carry it (``{"code": 200, "data": <JSON answer>}``), or ``None`` on failure."""
    assert app.callback_url is not None
    _loopback(app.callback_url)
    body, headers = _callback_body(app, delivery.payload)
    delivery.attempts += 1
    started = time.monotonic()
    try:
        timeout = aiohttp.ClientTimeout(total=emu.response_timeout)
        async with emu.callback_session().post(
            app.callback_url, data=body, headers=headers, allow_redirects=False, timeout=timeout
        ) as response:
            text = await response.read()
            if response.status != 200:
                return None
    except (aiohttp.ClientError, TimeoutError, RuntimeError):
        return None  # RuntimeError: the session was closed by a drop
    delivery.latencies.append(time.monotonic() - started)
    try:
        answer = parse_json_strict(text, where="callback answer") if text else {}
    except LoneSurrogate as exc:
        # refused as an answer that is not JSON (UNCONFIRMED: what Feishu does with it)
        log.warning("refused the answer of %s to event %s: %s", app.app_id, delivery.event_id, exc)
        answer = {}
    except ValueError:
        answer = {}
    return {"code": 200, "data": answer}


async def verify_url(emu: FeishuEmulator, app_id: str, url: str | None = None) -> bool:
    """Send the ``url_verification`` challenge to ``url`` (default: the app's callback
    URL); True if it echoed the challenge within ``response_timeout``."""
    app = emu.apps[app_id]
    url = url or app.callback_url
    assert url is not None
    _loopback(url)
    challenge = secrets.token_hex(8)
    payload = json.dumps(
        {"challenge": challenge, "token": app.verification_token, "type": "url_verification"}
    ).encode()
    body, headers = _callback_body(app, payload, signed=False)
    timeout = aiohttp.ClientTimeout(total=emu.response_timeout)
    try:
        async with emu.callback_session().post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            if response.status != 200:
                return False
            answer = parse_json_strict(await response.read(), where="challenge answer")
    except LoneSurrogate as exc:
        log.warning("refused the URL verification answer of %s: %s", app_id, exc)
        return False
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return isinstance(answer, dict) and answer.get("challenge") == challenge
