"""The console's HTTP and websocket API, and `imrobots demo` run as a subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from imrobots.cli import cli
from imrobots.console import server as console_server
from imrobots.demo import Demo
from imrobots.demo_agent import DemoAgent
from imrobots.memory import MemoryPlatform
from imrobots.plugins import PluginManager
from imrobots.webguard import TOKEN_HEADER

TOKEN = "console-test-token"


@pytest.fixture
async def demo(manager: PluginManager) -> AsyncIterator[Demo]:
    running = Demo(platforms=["memory"], manager=manager, agent=DemoAgent(delay=0.002))
    await running.start()
    yield running
    await running.stop()


async def poll(session: aiohttp.ClientSession, url: str, check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(url) as response:
            data = await response.json()
        if check(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met at {url}: {data}")
        await asyncio.sleep(0.05)


async def test_console_conversation_over_http_and_websocket(demo: Demo) -> None:
    assert demo.console is not None
    base = demo.console.url.rstrip("/")
    async with aiohttp.ClientSession(headers=demo.console.guard.headers()) as session:
        async with session.get(base + "/") as response:
            assert response.status == 200 and "imrobots console" in await response.text()
        async with session.get(base + "/static/app.js") as response:
            assert response.status == 200
        platforms = await (await session.get(base + "/api/platforms")).json()
        assert [p["name"] for p in platforms] == ["memory"] and platforms[0]["robot"] == "support"
        async with session.ws_connect(base + "/api/events") as ws:
            response = await session.post(
                base + "/api/memory/messages",
                json={"text": "How do I reset my password?", "conversation_id": "group-support"},
            )
            assert response.status == 200
            statuses = []
            async with asyncio.timeout(10):
                while "final" not in statuses:
                    event = await ws.receive_json()
                    if event["type"] == "card":
                        statuses.append(event["card"]["status"])
            assert statuses[0] == "thinking" and "streaming" in statuses
        state = await (await session.get(base + "/api/memory/state")).json()
        [card] = state["cards"]
        assert card["conversation_id"] == "group-support" and card["status"] == "final"
        assert state["messages"][0]["text"] == "@robot How do I reset my password?"
        assert state["calls"] and all(c["status"] == 200 for c in state["calls"])
        button = card["blocks"][-1]["buttons"][0]
        response = await session.post(
            base + "/api/memory/press", json={"card_id": card["id"], "button_id": "zz"}
        )
        assert response.status == 400
        assert await response.json() == {"error": f"card {card['id']} has no button 'zz'"}
        response = await session.post(
            base + "/api/memory/press", json={"card_id": card["id"], "button_id": button["id"]}
        )
        assert response.status == 200
        feedback = await poll(session, base + "/api/feedback", lambda items: len(items) == 1)
        assert feedback[0]["rating"] == "very_helpful"


async def test_console_rejects_bad_requests(demo: Demo) -> None:
    assert demo.console is not None
    base = demo.console.url.rstrip("/")
    async with aiohttp.ClientSession(headers=demo.console.guard.headers()) as session:
        response = await session.post(base + "/api/memory/messages", json={"text": ""})
        assert response.status == 400 and "non-empty" in (await response.json())["error"]
        response = await session.post(base + "/api/memory/messages", data="not json")
        assert response.status == 400
        response = await session.post(base + "/api/nowhere/messages", json={"text": "x"})
        assert response.status == 404
        response = await session.post(base + "/api/memory/faults", json={"kind": "meteor"})
        assert response.status == 400
        response = await session.post(
            base + "/api/memory/press", json={"card_id": "card-404", "button_id": "b"}
        )
        assert response.status == 400
        response = await session.get(base + "/static/../secrets.py")
        assert response.status == 404


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("group", "no", "group must be true or false"),
        ("mention", "yes", "mention must be true or false"),
        ("mention", 0, "mention must be true or false"),
        ("user_id", "", "user_id must be a non-empty string"),
        ("user_id", 7, "user_id must be a non-empty string"),
        ("user_name", {"a": 1}, "user_name must be a non-empty string"),
        ("conversation_id", 5, "conversation_id must be a non-empty string"),
        ("conversation_id", " ", "conversation_id must be a non-empty string"),
    ],
)
async def test_a_message_field_of_the_wrong_type_is_a_400_and_sends_nothing(
    demo: Demo, field: str, value: Any, error: str
) -> None:
    """Each field of ``POST /api/PAGE/messages`` is checked, not coerced: ``"group":
    "no"`` sent a group message (``bool("no")``), an empty ``user_id`` a message the
    platform plugin dropped as malformed, while the console answered 200."""
    assert demo.console is not None
    base = demo.console.url.rstrip("/")
    emulator = demo.console.pages["memory"].emulator
    async with aiohttp.ClientSession(headers=demo.console.guard.headers()) as session:
        response = await session.post(
            base + "/api/memory/messages", json={"text": "hello", field: value}
        )
        assert response.status == 400
        assert await response.json() == {"error": error}
        assert emulator.messages == []
        response = await session.post(
            base + "/api/memory/press", json={"card_id": "c", "button_id": "b", "user_id": 7}
        )
        assert response.status == 400
        assert await response.json() == {"error": "user_id must be a non-empty string"}
        # null stands for the default; the page's own body still goes through
        response = await session.post(
            base + "/api/memory/messages",
            json={"text": "hello", field: None, "group": False, "mention": True},
        )
        assert response.status == 200, await response.text()
        assert [m["text"] for m in emulator.messages if not m.get("from_robot")] == ["hello"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"kind": "errors", "value": 5}, "value of errors is a share of calls, 0..1, got 5"),
        ({"kind": "rate_limit", "value": 1.5}, "value of rate_limit is a share of calls, 0..1"),
        ({"kind": "errors", "value": -1}, "value must be 0 or more and finite, got -1"),
        ({"kind": "latency", "value": -3}, "value must be 0 or more and finite, got -3"),
        ({"kind": "latency", "value": float("inf")}, "value must be 0 or more and finite"),
        ({"kind": "errors", "value": float("nan")}, "value must be 0 or more and finite"),
        ({"kind": "errors", "value": True}, "value must be a number"),
    ],
)
async def test_a_fault_value_out_of_range_is_a_400_and_changes_nothing(
    demo: Demo, body: dict[str, Any], error: str
) -> None:
    """A share above 1 or below 0, a negative or infinite latency, NaN (which Python's
    JSON reader takes) and ``true`` were all set as faults, answered 200."""
    assert demo.console is not None
    base = demo.console.url.rstrip("/")
    platform = demo.console.pages["memory"].emulator.create_platform()
    assert isinstance(platform, MemoryPlatform)
    before = platform.settings
    async with aiohttp.ClientSession(headers=demo.console.guard.headers()) as session:
        response = await session.post(
            base + "/api/memory/faults",
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 400
        assert (await response.json())["error"].startswith(error)
        assert platform.settings == before
        response = await session.post(
            base + "/api/memory/faults", json={"kind": body["kind"], "value": 0.5}
        )
        assert response.status == 200


async def test_injected_errors_show_in_the_call_panel_data(demo: Demo) -> None:
    assert demo.console is not None
    base = demo.console.url.rstrip("/")
    async with aiohttp.ClientSession(headers=demo.console.guard.headers()) as session:
        response = await session.post(
            base + "/api/memory/faults", json={"kind": "errors", "value": 1}
        )
        assert response.status == 200
        await session.post(base + "/api/memory/messages", json={"text": "anyone?"})
        state = await poll(
            session,
            base + "/api/memory/state",
            lambda s: any(c["status"] >= 400 for c in s["calls"]),
        )
        assert any(c["error"] for c in state["calls"])
        await session.post(base + "/api/memory/faults", json={"kind": "errors", "value": 0})
        await poll(
            session,
            base + "/api/memory/state",
            lambda s: any(card["status"] == "final" for card in s["cards"]),
            timeout=30,
        )


def test_demo_command_serves_a_conversation_and_stops_on_sigint() -> None:
    """The README's first command: run `imrobots demo`, chat over HTTP, Ctrl-C, exit 0."""
    process = subprocess.Popen(
        [sys.executable, "-m", "imrobots", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "IMROBOTS_CONSOLE_TOKEN": TOKEN,
            "OPENAI_BASE_URL": "",
            "OPENAI_API_KEY": "",
        },
    )
    try:
        assert process.stdout is not None
        url = None
        deadline = time.monotonic() + 60
        lines = []
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.match(r"console: (http://127\.0\.0\.1:\d+/)", line)
            if match:
                url = match.group(1)
        assert url, "".join(lines)

        async def converse() -> dict[str, Any]:
            async with aiohttp.ClientSession(headers={TOKEN_HEADER: TOKEN}) as session:
                platforms = await (await session.get(url + "api/platforms")).json()
                name = platforms[-1]["name"]
                await session.post(
                    url + f"api/{name}/messages",
                    json={
                        "text": "What are your opening hours?",
                        "conversation_id": "group-support",
                    },
                )
                return await poll(
                    session,
                    url + f"api/{name}/state",
                    lambda s: any(c["status"] == "final" for c in s["cards"]),
                    timeout=30,
                )

        state = asyncio.run(converse())
        [card] = [c for c in state["cards"] if c["status"] == "final"]
        assert card["title"] == "What are your opening hours?"
        assert "Monday to Friday" in str(card["blocks"])
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert err.rstrip().endswith("stopped") and "stopped" not in out  # status: standard error


async def test_outcomes_ratings_transcripts_and_clearing_over_http(demo: Demo) -> None:
    assert demo.console is not None
    base = demo.console.url.rstrip("/")
    async with aiohttp.ClientSession(headers=demo.console.guard.headers()) as session:
        async with session.get(base + "/favicon.ico") as response:
            assert response.status == 200 and response.content_type == "image/svg+xml"
        async with session.ws_connect(base + "/api/events") as ws:
            said = await (
                await session.post(
                    base + "/api/memory/messages",
                    json={
                        "text": "not for you",
                        "conversation_id": "group-support",
                        "mention": False,
                    },
                )
            ).json()
            answered = await (
                await session.post(
                    base + "/api/memory/messages",
                    json={"text": "How do I get a refund?", "conversation_id": "group-support"},
                )
            ).json()
            outcomes: dict[str, Any] = {}
            card: dict[str, Any] = {}
            async with asyncio.timeout(20):
                while outcomes.get(answered["view_id"], {}).get("status") != "answered" or (
                    card.get("status") != "final"
                ):
                    event = await ws.receive_json()
                    if event["type"] == "outcome":
                        outcomes[event["outcome"]["message_id"]] = event["outcome"]
                    elif event["type"] == "card":
                        card = event["card"]
            assert outcomes[said["view_id"]] | {"time": 0} == {
                "message_id": said["view_id"],
                "status": "rejected",
                "reason": "robot not mentioned",
                "time": 0,
            }
            # two ratings of one answer by one user: the first is recorded, the second refused
            buttons = card["blocks"][-1]["buttons"]
            for button in (buttons[0], buttons[3]):
                response = await session.post(
                    base + "/api/memory/press",
                    json={"card_id": card["id"], "button_id": button["id"]},
                )
                assert response.status == 200
            ratings = []
            async with asyncio.timeout(10):
                while len(ratings) < 2:
                    event = await ws.receive_json()
                    if event["type"] == "rating":
                        ratings.append(event["rating"])
        assert [(r["label"], r["recorded"], r["kept"]) for r in ratings] == [
            ("Very helpful", True, None),
            ("No help", False, "Very helpful"),
        ]
        state = await (await session.get(base + "/api/memory/state")).json()
        assert state["outcomes"][said["view_id"]]["status"] == "rejected"
        assert len(state["ratings"]) == 2
        transcript = await (
            await session.get(base + "/api/memory/transcript?conversation_id=group-support")
        ).json()
        assert transcript["imrobots_transcript"] == 1
        assert [i["kind"] for i in transcript["items"]] == ["message", "message", "card"]
        assert transcript["items"][0]["outcome"]["status"] == "rejected"
        assert len(transcript["items"][2]["ratings"]) == 2
        # redeliver: the platform pushes the message again (the robot drops the duplicate)
        response = await session.post(
            base + "/api/memory/redeliver", json={"message_id": answered["view_id"]}
        )
        assert (
            response.status == 200
            and (await response.json())["message_id"] == answered["message_id"]
        )
        # clear: a fresh conversation takes the old one's place
        cleared = await (
            await session.post(
                base + "/api/memory/clear", json={"conversation_id": "group-support"}
            )
        ).json()
        assert cleared["conversation"]["id"] == "group-support-2"
        pages = await (await session.get(base + "/api/platforms")).json()
        assert pages[0]["conversations"][0]["id"] == "group-support-2"
        assert pages[0]["conversations"][0]["base"] == "group-support"
        response = await session.post(
            base + "/api/memory/messages",
            json={"text": "fresh start", "conversation_id": "group-support"},
        )
        assert (await response.json())["conversation_id"] == "group-support-2"


def test_console_command_serves_your_own_robots_and_stops_on_sigint() -> None:
    """`imrobots console --config FILE`: the config's robots on emulators, in the console."""
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imrobots",
            "console",
            "--config",
            "examples/custom_robot/robots.toml",
            "--port",
            "0",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "IMROBOTS_CONSOLE_TOKEN": TOKEN},
    )
    try:
        assert process.stdout is not None
        url, lines = None, []
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.match(r"console: (http://127\.0\.0\.1:\d+/)", line)
            url = match.group(1) if match else None
        assert url, "".join(lines)
        assert any("robot helpdesk (HelpdeskRobot) on memory" in line for line in lines)

        async def converse() -> dict[str, Any]:
            async with aiohttp.ClientSession(headers={TOKEN_HEADER: TOKEN}) as session:
                [page] = await (await session.get(url + "api/platforms")).json()
                assert page["name"] == "helpdesk" and page["title"] == "helpdesk · In-memory"
                await session.post(
                    url + "api/helpdesk/messages",
                    json={"text": "/status", "conversation_id": "direct"},
                )
                return await poll(
                    session,
                    url + "api/helpdesk/state",
                    lambda s: any(m["from_robot"] for m in s["messages"]),
                )

        state = asyncio.run(converse())
        assert [m["text"] for m in state["messages"] if m["from_robot"]] == [
            "All systems **operational**."
        ]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert err.rstrip().endswith("stopped") and "stopped" not in out  # status: standard error


def test_console_command_reports_every_error_of_the_config(tmp_path: Path) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.a]\nplatform = "memory"\n[robots.a.stream]\nmin_interval = -1\n'
        '[robots.b]\nplatform = "nowhere"\n[robots.b.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["console", "--config", str(config), "--port", "0"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.output  # a's range and missing agent, b's platform


async def test_a_websocket_client_that_stops_reading_holds_up_no_other(
    demo: Demo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client of /api/events whose socket goes silent without closing (a suspended
    laptop): its events wait in its own queue, the other clients get theirs at once, and
    past CLIENT_BACKLOG unsent events it is dropped. (Before, every event was written to
    the clients one after another: once the silent one's buffers were full, every other
    console tab stopped updating for good.)"""
    assert demo.console is not None
    console = demo.console
    monkeypatch.setattr(console_server, "CLIENT_BACKLOG", 50)
    loop = asyncio.get_running_loop()
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    silent.setblocking(False)
    try:
        await loop.sock_connect(silent, (console.host, console.port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(
            silent,
            (
                f"GET /api/events HTTP/1.1\r\nHost: {console.host}:{console.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        head = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in head:  # the answer's head, and not a byte more, ever
                head += await loop.sock_recv(silent, 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        base = console.url.rstrip("/")
        async with (
            aiohttp.ClientSession(headers=console.guard.headers()) as session,
            session.ws_connect(base + "/api/events") as ws,
        ):
            await _until(lambda: len(console._clients) == 2)

            async def read_until_the_probe_is_answered() -> None:
                while True:
                    event = await ws.receive_json()
                    card = event.get("card") or {}
                    if card.get("conversation_id") == "probe" and card["status"] == "final":
                        return

            reader = asyncio.create_task(read_until_the_probe_is_answered())
            # 10 MB of messages: more than the silent socket's buffers hold (4 MB of send
            # buffer at most here, net.ipv4.tcp_wmem), so its writer blocks
            big = "x" * 128 * 1024
            for i in range(80):
                response = await session.post(
                    base + "/api/memory/messages",
                    json={"text": f"{big} {i}", "conversation_id": f"c{i}", "mention": False},
                )
                assert response.status == 200
            response = await session.post(
                base + "/api/memory/messages",
                json={"text": "How do I get a refund?", "conversation_id": "probe"},
            )
            assert response.status == 200
            async with asyncio.timeout(20):
                await reader  # the reading client got every event, the probe's answer last
            [dropped] = [r for r in caplog.records if "stopped reading" in r.getMessage()]
            assert dropped.getMessage() == (
                "console: a websocket client stopped reading (50 events behind); dropped it"
            )
        await _until(lambda: not console._clients)  # the silent one gone, the reader left
    finally:
        silent.close()


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
