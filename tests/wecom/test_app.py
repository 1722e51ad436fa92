"""App mode (self-built app callbacks): crypto, URL check, forged callbacks, deadlines."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import socket
import struct
import time
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imrobots.errors import FatalPlatformError
from imrobots.platform import Message
from imrobots_wecom.console import WeComConsoleAdapter
from imrobots_wecom.crypto import CallbackCrypto, ForgedCallback
from imrobots_wecom.platform import WeComPlatform

# The sample of WeCom's callback crypto library (Tencent's WXBizMsgCrypt "Sample" for
# C#/Python/Java, as published with the docs of developer.work.weixin.qq.com path/90968;
# a copy: github.com/2830499544/VipCard, Chain.Wechat/Tencent/Sample.cs).
SAMPLE_TOKEN = "QDG6eK"
SAMPLE_CORP_ID = "wx5823bf96d3bd56c7"
SAMPLE_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
SAMPLE_SIGNATURE = "477715d11cdb4164915debcba66cb864d751f3e6"
SAMPLE_TIMESTAMP = "1409659813"
SAMPLE_NONCE = "1372623149"
SAMPLE_BODY = (
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA["
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3"
    "QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48k"
    "zJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun"
    "1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5"
    "wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8"
    "Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt></xml>"
)


def test_the_published_sample_decrypts_and_verifies() -> None:
    crypto = CallbackCrypto(SAMPLE_TOKEN, SAMPLE_KEY, SAMPLE_CORP_ID)
    xml = crypto.decrypt(SAMPLE_BODY, SAMPLE_SIGNATURE, SAMPLE_TIMESTAMP, SAMPLE_NONCE)
    assert "<Content><![CDATA[hello]]></Content>" in xml
    assert "<MsgId>4561255354251345929</MsgId>" in xml
    with pytest.raises(ForgedCallback) as caught:
        crypto.decrypt(SAMPLE_BODY, "0" * 40, SAMPLE_TIMESTAMP, SAMPLE_NONCE)
    assert SAMPLE_TOKEN not in str(caught.value) and SAMPLE_KEY not in str(caught.value)


class _Rig:
    def __init__(self) -> None:
        self.adapter = WeComConsoleAdapter(mode="app")
        self.received: list[Message] = []
        self.got = asyncio.Event()
        self.platform: WeComPlatform | None = None

    async def __aenter__(self) -> _Rig:
        await self.adapter.start()
        platform = self.adapter.create_platform()
        assert isinstance(platform, WeComPlatform)
        self.platform = platform

        async def sink(event: object) -> None:
            if isinstance(event, Message):
                self.received.append(event)
                self.got.set()

        await platform.start(sink)
        self.adapter._callback_url()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.platform is not None
        await self.platform.close()
        await self.adapter.stop()


async def test_url_verification_and_wechatpy_round_trip() -> None:
    async with _Rig() as rig:
        assert await rig.adapter.emulator.verify_url(rig.adapter.corp_id)
        await rig.adapter.emulator.push_app_message(
            rig.adapter.corp_id, user_id="bob", content="你好 WeCom", wait=True
        )
        async with asyncio.timeout(5):
            await rig.got.wait()
        message = rig.received[0]
        assert (message.text, message.sender.id, message.conversation.id) == (
            "你好 WeCom",
            "bob",
            "bob",
        )
        delivery = rig.adapter.emulator.deliveries[0]
        assert delivery.status == 200 and delivery.latency < 5


async def test_forged_callbacks_are_rejected_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with _Rig() as rig:
        assert rig.platform is not None and rig.platform.callback_url is not None
        app = rig.adapter.app
        xml, _ = rig.adapter.emulator.app_message_xml(app, user_id="mallory", content="evil")
        query, body = rig.adapter.emulator.encrypt_callback(app, xml)
        forged_signature = {**query, "msg_signature": "0" * 40}
        garbage = body.replace("<Encrypt><![CDATA[", "<Encrypt><![CDATA[AAAA")
        with caplog.at_level(logging.WARNING, logger="imrobots.wecom"):
            async with aiohttp.ClientSession() as session:
                for params, data in ((forged_signature, body), (query, garbage)):
                    async with session.post(
                        rig.platform.callback_url, params=params, data=data
                    ) as response:
                        assert response.status == 403
                async with session.get(
                    rig.platform.callback_url, params={**forged_signature, "echostr": "x"}
                ) as response:
                    assert response.status == 403
        assert rig.received == []
        assert rig.platform.forged == 3
        assert rig.platform.connection_status.rejections == 3
        assert "rejected" in caplog.text and app.token not in caplog.text
        assert "the msg_signature does not match" in caplog.text


async def test_malformed_callback_bodies_are_rejected_with_a_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bytes that are not UTF-8, not XML, XML without ``Encrypt``, or encrypted for
    another CorpID: each answered 403 and logged with a readable reason, no traceback."""
    async with _Rig() as rig:
        assert rig.platform is not None and rig.platform.callback_url is not None
        app = rig.adapter.app
        xml, _ = rig.adapter.emulator.app_message_xml(app, user_id="mallory", content="evil")
        query, _body = rig.adapter.emulator.encrypt_callback(app, xml)
        other = CallbackCrypto(app.token, app.encoding_aes_key, "ww-another-corp")
        envelope = ET.fromstring(other.encrypt(xml, query["nonce"], query["timestamp"]))
        other_query = {
            "msg_signature": envelope.findtext("MsgSignature") or "",
            "timestamp": query["timestamp"],
            "nonce": query["nonce"],
        }
        other_body = f"<xml><Encrypt><![CDATA[{envelope.findtext('Encrypt')}]]></Encrypt></xml>"
        cases: list[tuple[dict[str, str], bytes, str]] = [
            (query, b"\x00\xff<<garbage", "the body is not UTF-8 text"),
            (query, b"hello", "the body is not XML"),
            (query, b"<xml><a>1</a></xml>", "the body has no Encrypt element"),
            (other_query, other_body.encode(), "it is encrypted for another CorpID"),
        ]
        with caplog.at_level(logging.WARNING):
            async with aiohttp.ClientSession() as session:
                for params, data, _reason in cases:
                    async with session.post(
                        rig.platform.callback_url, params=params, data=data
                    ) as response:
                        assert response.status == 403
        assert rig.received == []
        assert rig.platform.forged == len(cases)
        for _params, _data, reason in cases:
            assert reason in caplog.text
        assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
        assert app.token not in caplog.text and app.encoding_aes_key not in caplog.text


async def test_a_callback_with_a_doctype_is_rejected_for_its_doctype(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body with a DOCTYPE (entities that expand, or none) was refused, but logged as
    "does not decrypt with the EncodingAESKey": the reason is the DOCTYPE, each is still
    answered 403 and counted, and the signed message inside reaches no robot."""
    async with _Rig() as rig:
        assert rig.platform is not None and rig.platform.callback_url is not None
        app = rig.adapter.app
        xml, _ = rig.adapter.emulator.app_message_xml(app, user_id="mallory", content="evil")
        query, body = rig.adapter.emulator.encrypt_callback(app, xml)
        laughs = (
            '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "ha"><!ENTITY b "&a;&a;&a;&a;">'
            '<!ENTITY c "&b;&b;&b;&b;">]>'
        )
        bodies = [
            laughs + body.replace("</xml>", "<Note>&c;</Note></xml>"),
            "<!DOCTYPE xml>" + body,
        ]
        with caplog.at_level(logging.WARNING, logger="imrobots.wecom"):
            async with aiohttp.ClientSession() as session:
                for data in bodies:
                    async with session.post(
                        rig.platform.callback_url, params=query, data=data.encode()
                    ) as response:
                        assert response.status == 403
        assert rig.received == []
        assert rig.platform.forged == 2 and rig.platform.connection_status.rejections == 2
        rejections = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert len(rejections) == 2, rejections
        for line in rejections:
            assert line.endswith(
                "the body is XML with a DOCTYPE (refused: entity expansion; WeCom's callbacks "
                "have none)"
            ), line
        assert "does not decrypt" not in caplog.text


async def test_retried_callbacks_reach_the_robot_once_per_msgid() -> None:
    """WeCom retries a callback not answered in 5 s; the robot sees each MsgId's content
    every time, and the core drops the repeats by MsgId (the id is the same)."""
    async with _Rig() as rig:
        msg_id = await rig.adapter.emulator.push_app_message(
            rig.adapter.corp_id, user_id="carol", content="once", wait=True
        )
        async with asyncio.timeout(5):
            await rig.got.wait()
        rig.got.clear()
        await rig.adapter.emulator.push_app_message(
            rig.adapter.corp_id, user_id="carol", msg_id=msg_id, wait=True
        )
        async with asyncio.timeout(5):
            await rig.got.wait()
        assert len(rig.received) == 2
        assert {m.id for m in rig.received} == {msg_id}


async def test_an_unanswered_callback_is_retried_three_times_in_all() -> None:
    adapter = WeComConsoleAdapter(mode="app", callback_timeout=0.2, callback_retry_delay=0.01)
    await adapter.start()

    async def stall(request: aiohttp.web.Request) -> aiohttp.web.Response:
        await asyncio.sleep(1)
        return aiohttp.web.Response()

    app = aiohttp.web.Application()
    app.router.add_post("/cb", stall)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    adapter.app.callback_url = f"http://127.0.0.1:{port}/cb"
    try:
        await adapter.emulator.push_app_message(
            adapter.corp_id, user_id="dan", content="x", wait=True
        )
        assert [d.attempt for d in adapter.emulator.deliveries] == [1, 2, 3]
        assert all(d.status is None for d in adapter.emulator.deliveries)
    finally:
        await runner.cleanup()
        await adapter.stop()


# The URL check of the same published sample (WXBizMsgCrypt "Sample", path/90968).
SAMPLE_URL_QUERY = {
    "msg_signature": "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
    "timestamp": "1409659589",
    "nonce": "263014780",
    "echostr": (
        "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
    ),
}
SAMPLE_ECHO = "1616140317555161061"


async def test_the_published_url_check_sample_is_answered_by_the_endpoint() -> None:
    """The sample's timestamp is from 2014: answered with a window that reaches back to
    it, refused as a replay with the default one."""
    crypto = CallbackCrypto(SAMPLE_TOKEN, SAMPLE_KEY, SAMPLE_CORP_ID)
    assert crypto.verify_url(*SAMPLE_URL_QUERY.values()) == SAMPLE_ECHO
    adapter = WeComConsoleAdapter(mode="app", corp_id=SAMPLE_CORP_ID)
    adapter.app.token, adapter.app.encoding_aes_key = SAMPLE_TOKEN, SAMPLE_KEY
    await adapter.start()
    forever = 100 * 365 * 86400.0
    try:
        for max_age, status in ((forever, 200), (300.0, 403)):
            platform = adapter.create_platform(callback_max_age=max_age)
            assert isinstance(platform, WeComPlatform)
            try:
                await platform.start(lambda event: asyncio.sleep(0))
                assert platform.callback_url is not None
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(platform.callback_url, params=SAMPLE_URL_QUERY) as response,
                ):
                    assert response.status == status
                    if status == 200:
                        assert await response.text() == SAMPLE_ECHO
            finally:
                await platform.close()
    finally:
        await adapter.stop()


@pytest.mark.parametrize("shift", [-86400, -301, 301], ids=["a day old", "stale", "future"])
async def test_signed_callbacks_outside_the_timestamp_window_are_refused(
    shift: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback and a URL check signed correctly, but with a timestamp more than
    ``callback_max_age`` (300 s) away from now: 403, a logged reason, nothing processed,
    counted as rejected; the same message with a fresh timestamp is then answered."""
    async with _Rig() as rig:
        assert rig.platform is not None and rig.platform.callback_url is not None
        app = rig.adapter.app
        xml, _ = rig.adapter.emulator.app_message_xml(app, user_id="mallory", content="old")
        nonce, timestamp = "123456789", str(int(time.time()) + shift)
        envelope = ET.fromstring(app.crypto.encrypt(xml, nonce, timestamp))
        encrypted = envelope.findtext("Encrypt") or ""
        query = {"msg_signature": envelope.findtext("MsgSignature") or "", "timestamp": timestamp}
        query["nonce"] = nonce
        body = f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
        echo = _seal("echo-1", app.corp_id, app.encoding_aes_key)
        url_check = {
            "msg_signature": _sign(app.token, timestamp, nonce, echo),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echo,
        }
        with caplog.at_level(logging.WARNING):
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    rig.platform.callback_url, params=query, data=body
                ) as response:
                    assert response.status == 403
                async with session.get(rig.platform.callback_url, params=url_check) as response:
                    assert response.status == 403
        assert rig.received == [] and rig.platform.forged == 2
        assert rig.platform.connection_status.rejections == 2
        assert "callback_max_age 300 s): a replay" in caplog.text
        assert ("in the future" if shift > 0 else "s old") in caplog.text
        assert not any(r.exc_info for r in caplog.records)
        fresh_query, fresh_body = rig.adapter.emulator.encrypt_callback(app, xml)
        async with (
            aiohttp.ClientSession() as session,
            session.post(rig.platform.callback_url, params=fresh_query, data=fresh_body) as ok,
        ):
            assert ok.status == 200
        async with asyncio.timeout(5):
            await rig.got.wait()
        assert [m.text for m in rig.received] == ["old"]


def _aes_key(encoding_aes_key: str) -> bytes:
    return base64.b64decode(encoding_aes_key + "=")


def _sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def _open(encrypted: str, encoding_aes_key: str) -> tuple[str, str]:
    """WeCom's callback cipher written from its documentation (path/90968), without
    wechatpy: AES-256-CBC, IV = the key's first 16 bytes, PKCS#7 to 32 bytes; plaintext
    = 16 random bytes + 4-byte big-endian length + message + receiveid."""
    key = _aes_key(encoding_aes_key)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(base64.b64decode(encrypted)) + decryptor.finalize()
    plain = plain[: -plain[-1]]
    length = struct.unpack(">I", plain[16:20])[0]
    return plain[20 : 20 + length].decode(), plain[20 + length :].decode()


def _seal(message: str, receive_id: str, encoding_aes_key: str) -> str:
    key = _aes_key(encoding_aes_key)
    raw = os.urandom(16) + struct.pack(">I", len(message.encode())) + message.encode()
    raw += receive_id.encode()
    pad = 32 - len(raw) % 32
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(
        encryptor.update(raw + bytes([pad]) * pad) + encryptor.finalize()
    ).decode()


async def test_callbacks_follow_the_documented_cipher_both_ways() -> None:
    """The emulator's callbacks open with the documented algorithm written here without
    wechatpy (signature and cipher), and a callback sealed that way is taken by the
    robot's endpoint (wechatpy's WeChatCrypto): the two sides agree with WeCom's
    documentation, not only with each other."""
    async with _Rig() as rig:
        app = rig.adapter.app
        xml, _ = rig.adapter.emulator.app_message_xml(app, user_id="dan", content="密文")
        query, body = rig.adapter.emulator.encrypt_callback(app, xml)
        encrypted = ET.fromstring(body).findtext("Encrypt") or ""
        assert query["msg_signature"] == _sign(
            app.token, query["timestamp"], query["nonce"], encrypted
        )
        assert _open(encrypted, app.encoding_aes_key) == (xml, app.corp_id)

        own_xml, own_id = rig.adapter.emulator.app_message_xml(
            app, user_id="erin", content="sealed"
        )
        sealed = _seal(own_xml, app.corp_id, app.encoding_aes_key)
        timestamp, nonce = str(int(time.time())), "424242"
        params = {
            "msg_signature": _sign(app.token, timestamp, nonce, sealed),
            "timestamp": timestamp,
            "nonce": nonce,
        }
        envelope = (
            f"<xml><ToUserName><![CDATA[{app.corp_id}]]></ToUserName>"
            f"<Encrypt><![CDATA[{sealed}]]></Encrypt></xml>"
        )
        assert rig.platform is not None and rig.platform.callback_url is not None
        async with (
            aiohttp.ClientSession() as session,
            session.post(rig.platform.callback_url, params=params, data=envelope) as response,
        ):
            assert response.status == 200
        async with asyncio.timeout(5):
            await rig.got.wait()
        assert [(m.id, m.text, m.sender.id) for m in rig.received] == [(own_id, "sealed", "erin")]


async def test_callbacks_while_closing_are_left_for_wecom_to_retry() -> None:
    """While the platform closes (work under way gets its grace), a new callback is
    answered 503, not 200: WeCom retries it instead of it being dropped here."""
    adapter = WeComConsoleAdapter(mode="app")
    await adapter.start()
    platform = adapter.create_platform(ack_timeout=2.0)
    assert isinstance(platform, WeComPlatform)
    busy, release = asyncio.Event(), asyncio.Event()

    async def sink(event: object) -> None:
        busy.set()
        await release.wait()

    try:
        await platform.start(sink)
        adapter._callback_url()
        await adapter.emulator.push_app_message(adapter.corp_id, user_id="fay", content="1")
        async with asyncio.timeout(5):
            await busy.wait()
        closing = asyncio.create_task(platform.close())
        await _until(lambda: platform._closing)
        app = adapter.app
        xml, _ = adapter.emulator.app_message_xml(app, user_id="gus", content="late")
        query, body = adapter.emulator.encrypt_callback(app, xml)
        assert app.callback_url is not None
        async with (
            aiohttp.ClientSession() as session,
            session.post(app.callback_url, params=query, data=body) as response,
        ):
            assert response.status == 503
        release.set()
        async with asyncio.timeout(5):
            await closing
    finally:
        release.set()
        await platform.close()
        await adapter.stop()


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("where", ["port in use", "not this machine's address"])
async def test_a_callback_address_that_cannot_be_bound_stops_the_start_in_one_line(
    where: str,
) -> None:
    """A callback port already in use, or a ``callback_host`` that is not this machine's, stopped
    ``imrobots run`` with an ``OSError`` traceback; it is now one
    :class:`FatalPlatformError` naming the address, as Feishu's callback endpoint says it,
    and nothing is left listening."""
    adapter = WeComConsoleAdapter(mode="app")
    await adapter.start()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: bind fails, nothing is sent
    host = "127.0.0.1" if where == "port in use" else "192.0.2.1"
    try:
        platform = adapter.create_platform(callback_host=host, callback_port=port)
        assert isinstance(platform, WeComPlatform)
        try:
            with pytest.raises(FatalPlatformError) as raised:
                await platform.start(lambda event: asyncio.sleep(0))
            assert str(raised.value).startswith(
                f"cannot listen for WeCom callbacks on {host}:{port}: "
            )
            assert platform.callback_url is None
        finally:
            await platform.close()
    finally:
        taken.close()
        await adapter.stop()
