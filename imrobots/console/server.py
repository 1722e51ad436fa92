"""The console's HTTP and websocket API, served with aiohttp on 127.0.0.1.

Routes (JSON):

* ``GET /api/platforms``: the running emulators, their robot, users and conversations;
* ``GET /api/{platform}/state``: messages, cards and API calls so far;
* ``POST /api/{platform}/messages``: ``{text, conversation_id, user_id, mention}``;
* ``POST /api/{platform}/press``: ``{card_id, button_id, user_id}``;
* ``POST /api/{platform}/faults``: ``{kind: "drop" | "errors" | "latency", value}``;
* ``GET /api/feedback``: stored feedback of every robot;
* ``GET /api/events``: a websocket of every event, each tagged with its platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from ..emulation import EmulatorAdapter
from ..runtime import RobotRuntime

__all__ = ["DEFAULT_CONVERSATIONS", "DEFAULT_USERS", "Console"]

log = logging.getLogger("imrobots.console")

DEFAULT_USERS = [
    {"id": "alice", "name": "Alice"},
    {"id": "bob", "name": "Bob"},
    {"id": "carol", "name": "Carol"},
]
DEFAULT_CONVERSATIONS = [
    {"id": "group-support", "title": "Customer support", "group": True},
    {"id": "direct", "title": "Direct chat", "group": False},
]


class ConsoleError(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


class Console:
    """Serves the console for a set of emulators and the robots running on them."""

    def __init__(
        self,
        emulators: Mapping[str, EmulatorAdapter],
        robots: Mapping[str, RobotRuntime],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.emulators = dict(emulators)
        self.robots = dict(robots)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._pumps: list[asyncio.Task[None]] = []
        self.url = ""

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self._index),
                web.get("/static/{name}", self._static),
                web.get("/api/platforms", self._platforms),
                web.get("/api/feedback", self._feedback),
                web.get("/api/events", self._events),
                web.get("/api/{platform}/state", self._state),
                web.post("/api/{platform}/messages", self._say),
                web.post("/api/{platform}/press", self._press),
                web.post("/api/{platform}/faults", self._fault),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.url = f"http://{self.host}:{self.port}/"
        for name, emulator in self.emulators.items():
            self._pumps.append(asyncio.create_task(self._pump(name, emulator)))

    async def stop(self) -> None:
        for task in self._pumps:
            task.cancel()
        for task in self._pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pumps.clear()
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _pump(self, name: str, emulator: EmulatorAdapter) -> None:
        queue = emulator.subscribe()
        try:
            while True:
                event = await queue.get()
                payload = {"platform": name, **event}
                for ws in list(self._sockets):
                    try:
                        await ws.send_json(payload)
                    except (ConnectionError, RuntimeError):
                        self._sockets.discard(ws)
        finally:
            emulator.unsubscribe(queue)

    # ---------------------------------------------------------------- helpers
    def _emulator(self, request: web.Request) -> EmulatorAdapter:
        name = request.match_info["platform"]
        emulator = self.emulators.get(name)
        if emulator is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no emulator {name!r} is running"}),
                content_type="application/json",
            )
        return emulator

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise ConsoleError("the body must be JSON") from None
        if not isinstance(body, dict):
            raise ConsoleError("the body must be a JSON object")
        return body

    # ---------------------------------------------------------------- routes
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return await self._static_file("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return await self._static_file(request.match_info["name"])

    async def _static_file(self, name: str) -> web.StreamResponse:
        types = {".html": "text/html", ".js": "application/javascript", ".css": "text/css"}
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or suffix not in types:
            raise web.HTTPNotFound()
        resource = resources.files("imrobots.console") / "static" / name
        if not resource.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=resource.read_bytes(), content_type=types[suffix], charset="utf-8")

    async def _platforms(self, request: web.Request) -> web.Response:
        items = []
        for name, emulator in self.emulators.items():
            robot = next((r for r in self.robots.values() if r.platform.name == name), None)
            items.append(
                {
                    "name": name,
                    "title": emulator.title or name,
                    "base_url": emulator.base_url,
                    "robot": robot.name if robot else None,
                    "users": DEFAULT_USERS,
                    "conversations": DEFAULT_CONVERSATIONS,
                }
            )
        return web.json_response(items)

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self._emulator(request).state())

    async def _say(self, request: web.Request) -> web.Response:
        emulator = self._emulator(request)
        body = await self._json(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ConsoleError("text must be a non-empty string")
        conversation = body.get("conversation_id", "direct")
        known = {c["id"]: c for c in DEFAULT_CONVERSATIONS}
        group = bool(body.get("group", known.get(conversation, {}).get("group", False)))
        user_id = str(body.get("user_id", "alice"))
        names = {u["id"]: u["name"] for u in DEFAULT_USERS}
        message_id = await emulator.say(
            text=text.strip(),
            conversation_id=str(conversation),
            group=group,
            user_id=user_id,
            user_name=str(body.get("user_name", names.get(user_id, user_id))),
            mention=bool(body.get("mention", True)),
        )
        return web.json_response({"message_id": message_id})

    async def _press(self, request: web.Request) -> web.Response:
        emulator = self._emulator(request)
        body = await self._json(request)
        card_id, button_id = body.get("card_id"), body.get("button_id")
        if not isinstance(card_id, str) or not isinstance(button_id, str):
            raise ConsoleError("card_id and button_id are required")
        try:
            await emulator.press(
                card_id=card_id, button_id=button_id, user_id=str(body.get("user_id", "alice"))
            )
        except (KeyError, ValueError) as exc:
            raise ConsoleError(str(exc).strip("'\"")) from None
        return web.json_response({"ok": True})

    async def _fault(self, request: web.Request) -> web.Response:
        emulator = self._emulator(request)
        body = await self._json(request)
        kind = body.get("kind")
        value = body.get("value")
        if kind not in ("drop", "errors", "latency"):
            raise ConsoleError("kind must be drop, errors or latency")
        if value is not None and not isinstance(value, int | float):
            raise ConsoleError("value must be a number")
        try:
            await emulator.fault(str(kind), None if value is None else float(value))
        except (NotImplementedError, ValueError) as exc:
            raise ConsoleError(str(exc)) from None
        return web.json_response({"ok": True})

    async def _feedback(self, request: web.Request) -> web.Response:
        items = []
        for runtime in self.robots.values():
            for fb in await runtime.store.list_feedback(robot=runtime.name):
                items.append(
                    {
                        "robot": fb.robot,
                        "platform": fb.platform,
                        "rating": fb.rating.value,
                        "label": fb.rating.label,
                        "user_id": fb.sender.id,
                        "question": fb.question,
                        "time": fb.time.timestamp(),
                    }
                )
        items.sort(key=lambda item: item["time"])
        return web.json_response(items)

    async def _events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            async for message in ws:
                if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self._sockets.discard(ws)
        return ws
