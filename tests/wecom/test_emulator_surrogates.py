"""The WeCom emulator refuses client JSON holding a lone surrogate, and loses nothing else.

JSON may escape a lone surrogate (``"a\\ud800b"``): valid JSON, which the parser turns
into a ``str`` UTF-8 cannot carry. Before, a robot's frame with one made the emulator
drop the robot's WebSocket (it measured the text and raised). Now each such frame gets an
error answer with its own ``req_id`` on a connection that stays up, and each app-mode
call the errcode WeCom gives a bad parameter. A robot's frame with no req_id to answer
(binary, not JSON, not an object) is dropped with a warning, and the connection goes on.
Raw frames and bytes over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from imrobots_wecom.emulator import WeComEmulator
from tests.surrogates import FINE, LONE, escaped

pytestmark = pytest.mark.asyncio

BOT = "bot-surrogates"
SECRET = "surrogate-secret"
CORP = "ww-surrogates"
CORP_SECRET = "corp-secret"
AGENT = 1000002
LOGGER = "imrobots.wecom.emulator"
BAD_PARAMETER = 40058


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[WeComEmulator]:
    emulator = WeComEmulator()
    emulator.add_bot(BOT, SECRET)
    emulator.add_app(CORP, CORP_SECRET, agent_id=AGENT)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    frame = json.loads(msg.data)
    assert isinstance(frame, dict)
    return frame


async def request(ws: aiohttp.ClientWebSocketResponse, text: str) -> dict[str, Any]:
    """Send a frame and read the answer to it (the next frame)."""
    await ws.send_str(text)
    return await receive(ws)


def respond(req_id: str, stream_id: str, content: str, finish: bool = False) -> dict[str, Any]:
    return {
        "cmd": "aibot_respond_msg",
        "headers": {"req_id": req_id},
        "body": {
            "msgtype": "stream",
            "stream": {"id": stream_id, "finish": finish, "content": content},
        },
    }


async def test_robot_frames_with_a_lone_surrogate_get_an_error_answer_and_the_connection_stays(
    http: aiohttp.ClientSession, emu: WeComEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await http.ws_connect(emu.ws_url)
    subscribe = {"cmd": "aibot_subscribe", "headers": {"req_id": "s1"}}
    answer = await request(ws, json.dumps({**subscribe, "body": {"bot_id": BOT, "secret": SECRET}}))
    assert answer["errcode"] == 0
    await emu.push_message(BOT, user_id="u1", msgtype="text", content={"text": "hi"})
    pushed = await receive(ws)
    assert pushed["cmd"] == "aibot_msg_callback"
    req_id = pushed["headers"]["req_id"]

    hostile: list[tuple[str, str, str]] = [
        # (frame, the req_id it carries, where the surrogate lies)
        (escaped(respond(req_id, "st1", LONE)), req_id, "body.stream.content"),
        (escaped({**respond(req_id, "st1", "x"), LONE: 1}), req_id, "frame"),
        (
            escaped(
                {
                    "cmd": "aibot_send_msg",
                    "headers": {"req_id": "send1"},
                    "body": {"chatid": "u1", "msgtype": "markdown", "markdown": {"content": LONE}},
                }
            ),
            "send1",
            "body.markdown.content",
        ),
        (
            escaped(
                {
                    "cmd": "aibot_upload_media_init",
                    "headers": {"req_id": "up1"},
                    "body": {"type": "file", "filename": LONE, "total_size": 10, "total_chunks": 1},
                }
            ),
            "up1",
            "body.filename",
        ),
        # a lone surrogate in the req_id itself: echoed as it came, so the client can match it
        (escaped({"cmd": "ping", "headers": {"req_id": "p" + LONE}}), "p" + LONE, "headers.req_id"),
    ]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for text, expected_id, where in hostile:
            answer = await request(ws, text)
            assert answer["headers"]["req_id"] == expected_id, answer
            assert answer["errcode"] == BAD_PARAMETER, answer
            assert "lone surrogate" in answer["errmsg"] and where in answer["errmsg"], answer
    refusals = [r for r in caplog.records if "lone surrogate" in r.getMessage()]
    assert len(refusals) == len(hostile) and all(r.levelno >= logging.INFO for r in refusals)
    assert not emu.cards and not emu.messages and not emu.uploads  # nothing was taken
    assert [c["error"] for c in emu.calls[-len(hostile) :]] == [str(BAD_PARAMETER)] * len(hostile)

    # the same connection goes on: the reply with text UTF-8 carries is taken
    answer = await request(ws, json.dumps(respond(req_id, "st1", FINE, finish=True)))
    assert answer == {"headers": {"req_id": req_id}, "errcode": 0, "errmsg": "ok"}
    assert emu.cards["st1"].content == FINE and emu.cards["st1"].finished
    assert emu.connected(BOT) and not ws.closed
    await ws.close()


async def test_app_mode_calls_with_a_lone_surrogate_get_the_bad_parameter_errcode(
    http: aiohttp.ClientSession, emu: WeComEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    async with http.get(
        f"{emu.base_url}/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": CORP_SECRET}
    ) as resp:
        token = (await resp.json())["access_token"]

    async def post(route: str, data: bytes) -> tuple[int, dict[str, Any]]:
        async with http.post(
            f"{emu.base_url}{route}",
            params={"access_token": token},
            data=data,
            headers={"Content-Type": "application/json"},
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    markdown = {"agentid": AGENT, "touser": "u1", "msgtype": "markdown"}
    refused: list[tuple[str, bytes, str]] = [
        (
            "/cgi-bin/message/send",
            escaped({**markdown, "markdown": {"content": LONE}}).encode(),
            "markdown.content",
        ),
        (
            "/cgi-bin/message/send",
            escaped({**markdown, "touser": LONE, "markdown": {"content": "x"}}).encode(),
            "touser",
        ),
        (
            "/cgi-bin/message/send",
            json.dumps({**markdown, "markdown": {"content": "raw"}})
            .encode()
            .replace(b"raw", b"r\xed\xa0\x80w"),
            "markdown.content",
        ),
        (
            "/cgi-bin/appchat/send",
            escaped(
                {"chatid": "c1", "msgtype": "markdown", "markdown": {"content": LONE}}
            ).encode(),
            "markdown.content",
        ),
        (
            "/cgi-bin/message/update_template_card",
            escaped(
                {"agentid": AGENT, "response_code": "rc", "button": {"replace_name": LONE}}
            ).encode(),
            "button.replace_name",
        ),
    ]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for route, body, where in refused:
            status, answer = await post(route, body)
            # WeCom answers a bad request with HTTP 200 and a non-zero errcode
            assert status == 200, answer
            assert answer["errcode"] == BAD_PARAMETER, (route, answer)
            assert "lone surrogate" in answer["errmsg"] and where in answer["errmsg"], answer
            assert emu.calls[-1]["route"] == route and emu.calls[-1]["error"] == str(BAD_PARAMETER)
    assert sum("lone surrogate" in r.getMessage() for r in caplog.records) == len(refused)
    assert not emu.messages and not emu.cards

    status, answer = await post(
        "/cgi-bin/message/send", json.dumps({**markdown, "markdown": {"content": FINE}}).encode()
    )
    assert status == 200 and answer["errcode"] == 0, answer
    assert [m["text"] for m in emu.messages] == [FINE]


@pytest.mark.parametrize(
    ("frame", "what"),
    [
        (b"\x00\x01binary", "a binary frame (8 bytes)"),
        ("not json {", "a text frame that is not JSON (10 chars)"),
        ("[1, 2]", "a JSON list, not an object"),
    ],
)
async def test_an_unreadable_robot_frame_is_logged_and_the_connection_stays(
    http: aiohttp.ClientSession,
    emu: WeComEmulator,
    caplog: pytest.LogCaptureFixture,
    frame: bytes | str,
    what: str,
) -> None:
    """A frame with no req_id to answer (binary, not JSON, not an object) is dropped with a
    warning naming the connection and the bot, never its secret; the next frame works."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ws = await http.ws_connect(emu.ws_url)
    subscribe = {"cmd": "aibot_subscribe", "headers": {"req_id": "s1"}}
    answer = await request(ws, json.dumps({**subscribe, "body": {"bot_id": BOT, "secret": SECRET}}))
    assert answer["errcode"] == 0
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)
    pong = await request(ws, json.dumps({"cmd": "ping", "headers": {"req_id": "p1"}}))
    assert pong == {"headers": {"req_id": "p1"}, "errcode": 0, "errmsg": "ok"}
    [line] = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert line.startswith(f"dropped {what} on robot connection ")
    assert f"(bot {BOT})" in line and SECRET not in line
    await ws.close()
