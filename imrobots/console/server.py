"""The console's HTTP and websocket API, served with aiohttp on 127.0.0.1.

The console shows pages: one per emulator, each hosting at most one robot. ``PAGE`` in
the routes is a page's name (the platform's name in ``imrobots demo``, the robot's name
in ``imrobots console --config``). Routes (JSON):

* ``GET /api/platforms``: the pages: platform, title, robot, users and conversations;
* ``GET /api/PAGE/state``: messages, cards and API calls so far, what the robot made of
  each message (``outcomes``), the ratings given on its cards (``ratings``);
* ``POST /api/PAGE/messages``: ``{text, conversation_id, user_id, mention}``;
* ``POST /api/PAGE/press``: ``{card_id, button_id, user_id}``;
* ``POST /api/PAGE/faults``: ``{kind: "drop" | "errors" | "rate_limit" | "latency", value}``;
* ``POST /api/PAGE/redeliver``: ``{message_id}`` (a message view's id, or the platform's):
  the platform pushes that message to the robot again;
* ``POST /api/PAGE/clear``: ``{conversation_id}``: a fresh conversation in its place;
* ``GET /api/PAGE/transcript?conversation_id=ID``: the conversation as a JSON transcript;
* ``GET /api/feedback``: stored feedback of every robot;
* ``GET /api/events``: a websocket of every event, each tagged with its ``platform`` (the
  page): the emulators' events, and the console's own ``outcome`` and ``rating`` events.

Every route is behind a :class:`~imrobots.webguard.WebGuard` (see docs/console.md): the
``Host`` must be an IP address, ``localhost`` or a ``public_hosts`` name; a ``POST`` or a
websocket with a foreign ``Origin`` is refused; a ``POST`` needs :attr:`Console.token`
(the ``X-Imrobots-Token`` header, or the cookie the page ``/`` sets). Bound beyond
loopback, the console needs an explicit token and every route needs it.

The console learns what a robot made of a message (received, rejected and why, answered)
by tapping its runtime's hooks, and which ratings were recorded or refused (a second
rating of one answer by one user) from a :class:`ConsoleStore`, when the robot uses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import attrs
from aiohttp import WSMsgType, web

from ..emulation import EmulatorAdapter
from ..models import Feedback
from ..runtime import RobotRuntime
from ..store import MemoryStore
from ..webguard import WebGuard, is_loopback, new_token

__all__ = ["DEFAULT_CONVERSATIONS", "DEFAULT_USERS", "Console", "ConsoleStore", "check_binding"]

log = logging.getLogger("imrobots.console")

View = dict[str, Any]

DEFAULT_USERS: list[View] = [
    {"id": "alice", "name": "Alice"},
    {"id": "bob", "name": "Bob"},
    {"id": "carol", "name": "Carol"},
]
DEFAULT_CONVERSATIONS: list[View] = [
    {"id": "group-support", "title": "Customer support", "group": True},
    {"id": "direct", "title": "Direct chat", "group": False},
]
FAULTS = ("drop", "errors", "rate_limit", "latency")
TRANSCRIPT_VERSION = 1

_STATIC_TYPES = {
    ".html": "text/html",
    ".js": "application/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


CLIENT_BACKLOG = 1000
"""Events a websocket client of ``/api/events`` may fall behind by. Each client has its
own queue and writer, so one that stops reading (a suspended laptop, a stalled tab: its
socket silent but open) holds up no other; past this many unsent events it is dropped
(its connection aborted, a warning logged) rather than kept growing its queue."""

MIN_TOKEN_LENGTH = 16
"""Characters a token must have when the console listens beyond loopback (a guessable
one would guard nothing; ``python -c "import secrets; print(secrets.token_urlsafe())"``
prints a good one)."""


def check_binding(host: str, token: str | None) -> None:
    """Raise :class:`ValueError` if a console on ``host`` would listen beyond loopback
    with no explicit ``token``, or with one shorter than :data:`MIN_TOKEN_LENGTH`."""
    if is_loopback(host):
        return
    if not token:
        raise ValueError(
            f"the console would listen on {host}, beyond loopback: give it a token "
            "(--token or IMROBOTS_CONSOLE_TOKEN) that every browser and client must present"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the console would listen on {host}, beyond loopback, with a token of "
            f"{len(token)} characters: give --token or IMROBOTS_CONSOLE_TOKEN at least "
            f"{MIN_TOKEN_LENGTH} (python -c 'import secrets; print(secrets.token_urlsafe())' "
            "prints one)"
        )


class ConsoleError(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


def _text_field(body: Mapping[str, Any], name: str, default: str) -> str:
    """``body[name]``, a non-blank string, or ``default`` when absent or null; anything
    else raises :class:`ConsoleError` naming the field."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise ConsoleError(f"{name} must be a non-empty string")
    return value


def _reason(exc: Exception) -> str:
    """What an emulator's refusal says: a ``KeyError``'s key without the quotes ``str``
    adds, any other exception's message as it is (``card c1 has no button 'b'``)."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _flag_field(body: Mapping[str, Any], name: str, default: bool) -> bool:
    """``body[name]``, ``true`` or ``false``, or ``default`` when absent or null (a string
    such as ``"no"`` is refused: ``bool("no")`` is true)."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConsoleError(f"{name} must be true or false")
    return value


class ConsoleStore(MemoryStore):
    """A :class:`MemoryStore` that tells the console about every rating it is given,
    recorded or refused (a user rating the same answer twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[Callable[[Feedback, bool], None]] = []

    async def add_feedback(self, feedback: Feedback) -> bool:
        recorded = await super().add_feedback(feedback)
        for listener in list(self.listeners):
            listener(feedback, recorded)
        return recorded


class _HookTap:
    """Stands in for a runtime's ``hooks``: reports each hook call, then makes it."""

    def __init__(self, inner: Any, observe: Callable[[str, dict[str, Any]], None]) -> None:
        self.inner = inner
        self._observe = observe

    def __getattr__(self, name: str) -> Callable[..., Any]:
        inner = getattr(self.inner, name, None) if self.inner is not None else None

        def call(**kwargs: Any) -> Any:
            try:
                self._observe(name, kwargs)
            except Exception:  # the console must never break the robot
                log.exception("the console failed to note a %s hook", name)
            return inner(**kwargs) if inner is not None else []

        return call


@attrs.define
class _Page:
    """One chat page: an emulator, and the robot on it (if it runs in this process)."""

    name: str
    emulator: EmulatorAdapter
    runtime: RobotRuntime | None
    title: str
    generations: dict[str, int] = attrs.field(factory=dict)
    """Per conversation, how often it was cleared (its id then ends in ``-N``)."""
    sent: dict[str, str] = attrs.field(factory=dict)
    """The platform's message id -> the id of the message's view."""
    platform_ids: dict[str, str] = attrs.field(factory=dict)
    """A message view's id -> the platform's message id."""
    outcomes: dict[str, View] = attrs.field(factory=dict)
    """A message view's id -> what the robot made of it."""
    early: dict[str, list[View]] = attrs.field(factory=dict)
    """Outcomes of messages the robot saw before :meth:`Console._say` knew their view."""
    ratings: list[View] = attrs.field(factory=list)

    def conversation_id(self, base: str) -> str:
        generation = self.generations.get(base, 0)
        return base if generation == 0 else f"{base}-{generation + 1}"

    def conversations(self) -> list[View]:
        return [
            {**c, "base": c["id"], "id": self.conversation_id(c["id"])}
            for c in DEFAULT_CONVERSATIONS
        ]

    def conversation(self, conversation_id: str) -> View | None:
        return next(
            (c for c in self.conversations() if conversation_id in (c["id"], c["base"])), None
        )


class Console:
    """Serves the console for a set of emulators and the robots running on them.

    ``emulators`` and ``robots`` are keyed by page name (a robot is shown on the page of
    the same name); ``titles`` names the pages' tabs (default: the emulator's title).

    ``token``: what state-changing requests must carry (default: a new random one per
    start, loopback only); binding ``host`` beyond loopback raises :class:`ValueError`
    unless a token is given. ``public_hosts``: host names (besides IP addresses and
    ``localhost``) the console may be reached by, e.g. behind a reverse proxy.
    ``guard_reads``: require the token on every route (default: when bound beyond
    loopback).
    """

    def __init__(
        self,
        emulators: Mapping[str, EmulatorAdapter],
        robots: Mapping[str, RobotRuntime],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        titles: Mapping[str, str] | None = None,
        token: str | None = None,
        public_hosts: Sequence[str] = (),
        guard_reads: bool | None = None,
    ) -> None:
        check_binding(host, token)
        self.guard = WebGuard(
            token=token or new_token(),
            public_hosts=frozenset(public_hosts),
            token_for_reads=not is_loopback(host) if guard_reads is None else guard_reads,
            cookie=True,
            entry="/",
        )
        self.emulators = dict(emulators)
        self.robots = dict(robots)
        self.host = host
        self.port = port
        self.pages = {
            name: _Page(
                name=name,
                emulator=emulator,
                runtime=self.robots.get(name),
                title=(titles or {}).get(name) or emulator.title or name,
            )
            for name, emulator in self.emulators.items()
        }
        self._runner: web.AppRunner | None = None
        self._clients: dict[
            web.WebSocketResponse, tuple[asyncio.Queue[View], asyncio.BaseTransport | None]
        ] = {}
        """Each websocket client of ``/api/events``: the events it has yet to be sent, and
        its connection."""
        self._pumps: list[asyncio.Task[None]] = []
        self._taps: list[tuple[RobotRuntime, _HookTap]] = []
        self._stores: list[tuple[ConsoleStore, Callable[[Feedback, bool], None]]] = []
        self.url = ""

    @property
    def token(self) -> str:
        """The token state-changing requests must carry (``X-Imrobots-Token``)."""
        return self.guard.token

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[self.guard.middleware])
        app.add_routes(
            [
                web.get("/", self._index),
                web.get("/favicon.ico", self._favicon),
                web.get("/static/{name}", self._static),
                web.get("/api/platforms", self._platforms),
                web.get("/api/feedback", self._feedback),
                web.get("/api/events", self._events),
                web.get("/api/{platform}/state", self._state),
                web.get("/api/{platform}/transcript", self._transcript),
                web.post("/api/{platform}/messages", self._say),
                web.post("/api/{platform}/press", self._press),
                web.post("/api/{platform}/faults", self._fault),
                web.post("/api/{platform}/redeliver", self._redeliver),
                web.post("/api/{platform}/clear", self._clear),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.url = f"http://{self.host}:{self.port}/"
        for page in self.pages.values():
            self._pumps.append(asyncio.create_task(self._pump(page)))
            self._observe(page)

    async def stop(self) -> None:
        for runtime, tap in self._taps:
            if runtime.hooks is tap:
                runtime.hooks = tap.inner
        self._taps.clear()
        for store, listener in self._stores:
            with contextlib.suppress(ValueError):
                store.listeners.remove(listener)
        self._stores.clear()
        for task in self._pumps:
            task.cancel()
        for task in self._pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pumps.clear()
        for ws in list(self._clients):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _observe(self, page: _Page) -> None:
        runtime = page.runtime
        if runtime is None:
            return

        def on_hook(hook: str, kwargs: dict[str, Any]) -> None:
            self._on_hook(page, hook, kwargs)

        tap = _HookTap(runtime.hooks, on_hook)
        runtime.hooks = tap
        self._taps.append((runtime, tap))
        if isinstance(runtime.store, ConsoleStore):

            def on_rating(feedback: Feedback, recorded: bool) -> None:
                if feedback.robot == runtime.name:
                    self._on_rating(page, feedback, recorded)

            runtime.store.listeners.append(on_rating)
            self._stores.append((runtime.store, on_rating))

    def _broadcast(self, payload: View) -> None:
        """Queue ``payload`` for every websocket client, in order; a client
        :data:`CLIENT_BACKLOG` events behind is dropped."""
        for ws, (queue, transport) in list(self._clients.items()):
            try:
                queue.put_nowait(payload)
            except asyncio.QueueFull:
                log.warning(
                    "console: a websocket client stopped reading (%d events behind); dropped it",
                    queue.qsize(),
                )
                del self._clients[ws]
                # (abort: a close frame would wait on the same full socket; uvloop's
                # transports have abort() without subclassing asyncio.Transport)
                abort = getattr(transport, "abort", None)
                if abort is not None:
                    abort()

    async def _write(self, ws: web.WebSocketResponse, queue: asyncio.Queue[View]) -> None:
        """Send one client its events, one after another (the writer of :meth:`_events`)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await ws.send_json(await queue.get())

    async def _pump(self, page: _Page) -> None:
        queue = page.emulator.subscribe()
        try:
            while True:
                event = await queue.get()
                self._broadcast({"platform": page.name, **event})
        finally:
            page.emulator.unsubscribe(queue)

    # ---------------------------------------------------------------- what the robot did
    def _on_hook(self, page: _Page, hook: str, kwargs: dict[str, Any]) -> None:
        message_id = getattr(kwargs.get("message"), "id", None)
        if not isinstance(message_id, str):
            return
        if hook == "message_received":
            outcome: View = {"status": "received"}
        elif hook == "message_rejected":
            outcome = {"status": "rejected", "reason": str(kwargs.get("reason", ""))}
        elif hook == "reply_finished":
            result = kwargs.get("result")
            status = getattr(getattr(result, "status", None), "value", "final")
            outcome = {"status": "answered", "answer": status}
        else:
            return
        outcome["time"] = time.time()
        view_id = page.sent.get(message_id)
        if view_id is None:  # not sent from the console, or its say() has not returned yet
            early = page.early.setdefault(message_id, [])
            early.append(outcome)
            while len(page.early) > 1000:
                page.early.pop(next(iter(page.early)))
            return
        self._outcome(page, view_id, outcome)

    def _outcome(self, page: _Page, view_id: str, outcome: View) -> None:
        outcome = {"message_id": view_id, **outcome}
        previous = page.outcomes.get(view_id)
        if (
            previous is not None
            and previous["status"] == "answered"
            and outcome["status"] != "answered"
        ):
            return  # "received" after "answered": keep what it came to
        page.outcomes[view_id] = outcome
        self._broadcast({"platform": page.name, "type": "outcome", "outcome": outcome})

    def _on_rating(self, page: _Page, feedback: Feedback, recorded: bool) -> None:
        kept = None
        if not recorded:
            kept = next(
                (
                    r["label"]
                    for r in page.ratings
                    if r["recorded"]
                    and r["user_id"] == feedback.sender.id
                    and (r["card_id"], r["answer_id"]) == (feedback.card_id, feedback.message_id)
                ),
                None,
            )
        rating: View = {
            "card_id": feedback.card_id,
            "answer_id": feedback.message_id,
            "user_id": feedback.sender.id,
            "user_name": feedback.sender.name or feedback.sender.id,
            "rating": feedback.rating.value,
            "label": feedback.rating.label,
            "recorded": recorded,
            "kept": kept,
            "time": time.time(),
        }
        page.ratings.append(rating)
        self._broadcast({"platform": page.name, "type": "rating", "rating": rating})

    # ---------------------------------------------------------------- helpers
    def _page(self, request: web.Request) -> _Page:
        name = request.match_info["platform"]
        page = self.pages.get(name)
        if page is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no emulator {name!r} is running"}),
                content_type="application/json",
            )
        return page

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
        if "token" in request.query:  # the guard checked it: keep it in a cookie, not the URL
            response: web.StreamResponse = web.Response(status=303, headers={"Location": "/"})
        else:
            response = await self._static_file("index.html")
        # The page's own fetch() and websocket send it back; other sites' requests do not
        # (SameSite=Strict), and no script reads it (HttpOnly).
        response.set_cookie(
            self.guard.cookie_name, self.guard.token, httponly=True, samesite="Strict", path="/"
        )
        return response

    async def _favicon(self, request: web.Request) -> web.StreamResponse:
        return await self._static_file("favicon.svg")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return await self._static_file(request.match_info["name"])

    async def _static_file(self, name: str) -> web.StreamResponse:
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or suffix not in _STATIC_TYPES:
            raise web.HTTPNotFound()
        resource = resources.files("imrobots.console") / "static" / name
        if not resource.is_file():
            raise web.HTTPNotFound()
        return web.Response(
            body=resource.read_bytes(),
            content_type=_STATIC_TYPES[suffix],
            charset="utf-8" if suffix != ".svg" else None,
            headers={"Cache-Control": "no-cache"},
        )

    async def _platforms(self, request: web.Request) -> web.Response:
        items = []
        for page in self.pages.values():
            runtime = page.runtime
            items.append(
                {
                    "name": page.name,
                    "platform": page.emulator.platform or page.name,
                    "title": page.title,
                    "base_url": page.emulator.base_url,
                    "robot": runtime.name if runtime else None,
                    "robot_here": runtime is not None,
                    "users": DEFAULT_USERS,
                    "conversations": page.conversations(),
                    "faults": list(FAULTS),
                }
            )
        return web.json_response(items)

    async def _state(self, request: web.Request) -> web.Response:
        page = self._page(request)
        state: View = dict(page.emulator.state())
        state["outcomes"] = dict(page.outcomes)
        state["ratings"] = list(page.ratings)
        state["platform_ids"] = dict(page.platform_ids)
        return web.json_response(state)

    async def _say(self, request: web.Request) -> web.Response:
        page = self._page(request)
        body = await self._json(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ConsoleError("text must be a non-empty string")
        conversation_id = _text_field(body, "conversation_id", "direct")
        user_id = _text_field(body, "user_id", "alice")
        names = {u["id"]: u["name"] for u in DEFAULT_USERS}
        user_name = _text_field(body, "user_name", names.get(user_id, user_id))
        mention = _flag_field(body, "mention", True)
        known = page.conversation(conversation_id)
        if known is not None:
            conversation_id = known["id"]
        group = _flag_field(body, "group", bool(known["group"]) if known else False)
        before = len(page.emulator.messages)
        try:
            message_id = await page.emulator.say(
                text=text.strip(),
                conversation_id=conversation_id,
                group=group,
                user_id=user_id,
                user_name=user_name,
                mention=mention,
            )
        except (ValueError, NotImplementedError) as exc:
            raise ConsoleError(str(exc)) from None
        view_id = next(
            (
                m["id"]
                for m in page.emulator.messages[before:]
                if not m.get("from_robot") and m.get("user_id") == user_id
            ),
            None,
        )
        if view_id is not None:
            page.sent[message_id] = view_id
            page.platform_ids[view_id] = message_id
            for outcome in page.early.pop(message_id, []):
                self._outcome(page, view_id, outcome)
        return web.json_response(
            {"message_id": message_id, "view_id": view_id, "conversation_id": conversation_id}
        )

    async def _press(self, request: web.Request) -> web.Response:
        page = self._page(request)
        body = await self._json(request)
        card_id, button_id = body.get("card_id"), body.get("button_id")
        if not isinstance(card_id, str) or not isinstance(button_id, str):
            raise ConsoleError("card_id and button_id are required")
        user_id = _text_field(body, "user_id", "alice")
        try:
            await page.emulator.press(card_id=card_id, button_id=button_id, user_id=user_id)
        except (KeyError, ValueError) as exc:
            raise ConsoleError(_reason(exc)) from None
        return web.json_response({"ok": True})

    async def _fault(self, request: web.Request) -> web.Response:
        page = self._page(request)
        body = await self._json(request)
        kind = body.get("kind")
        value = body.get("value")
        if kind not in FAULTS:
            raise ConsoleError(f"kind must be one of {', '.join(FAULTS)}")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConsoleError("value must be a number")
            if not math.isfinite(value) or value < 0:
                raise ConsoleError(f"value must be 0 or more and finite, got {value!r}")
            if kind in ("errors", "rate_limit") and value > 1:
                raise ConsoleError(f"value of {kind} is a share of calls, 0..1, got {value!r}")
        try:
            await page.emulator.fault(str(kind), None if value is None else float(value))
        except (NotImplementedError, ValueError, TimeoutError) as exc:
            raise ConsoleError(str(exc) or type(exc).__name__) from None
        return web.json_response({"ok": True})

    async def _redeliver(self, request: web.Request) -> web.Response:
        page = self._page(request)
        body = await self._json(request)
        message_id = body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise ConsoleError("message_id is required")
        platform_id = page.platform_ids.get(message_id, message_id)
        try:
            await page.emulator.redeliver(platform_id)
        except (NotImplementedError, ValueError, KeyError) as exc:
            raise ConsoleError(_reason(exc)) from None
        return web.json_response({"ok": True, "message_id": platform_id})

    async def _clear(self, request: web.Request) -> web.Response:
        page = self._page(request)
        body = await self._json(request)
        known = page.conversation(str(body.get("conversation_id", "")))
        if known is None:
            raise ConsoleError("unknown conversation_id")
        page.generations[known["base"]] = page.generations.get(known["base"], 0) + 1
        fresh = page.conversation(known["base"])
        assert fresh is not None
        return web.json_response({"ok": True, "conversation": fresh})

    async def _transcript(self, request: web.Request) -> web.Response:
        page = self._page(request)
        conversation_id = request.query.get("conversation_id", "")
        known = page.conversation(conversation_id)
        if known is not None and conversation_id == known["base"]:
            conversation_id = known["id"]
        state = page.emulator.state()
        items: list[View] = []
        for message in state["messages"]:
            if message.get("conversation_id") == conversation_id:
                item = {"kind": "message", **message}
                if message["id"] in page.outcomes:
                    item["outcome"] = page.outcomes[message["id"]]
                items.append(item)
        for card in state["cards"]:
            if card.get("conversation_id") == conversation_id:
                ratings = [r for r in page.ratings if r["card_id"] == card["id"]]
                items.append({"kind": "card", **card, "ratings": ratings})
        items.sort(key=lambda i: float(i.get("time") or i.get("created") or 0))
        transcript = {
            "imrobots_transcript": TRANSCRIPT_VERSION,
            "page": page.name,
            "platform": page.emulator.platform,
            "robot": page.runtime.name if page.runtime else None,
            "conversation": known or {"id": conversation_id},
            "saved": time.time(),
            "items": items,
        }
        return web.json_response(transcript)

    async def _feedback(self, request: web.Request) -> web.Response:
        items: list[View] = []
        seen: set[int] = set()
        for page in self.pages.values():
            runtime = page.runtime
            if runtime is None or id(runtime) in seen:
                continue
            seen.add(id(runtime))
            for fb in await runtime.store.list_feedback(robot=runtime.name):
                items.append(
                    {
                        "robot": fb.robot,
                        "platform": fb.platform,
                        "page": page.name,
                        "rating": fb.rating.value,
                        "label": fb.rating.label,
                        "user_id": fb.sender.id,
                        "question": fb.question,
                        "card_id": fb.card_id,
                        "time": fb.time.timestamp(),
                    }
                )
        items.sort(key=lambda item: float(item["time"]))
        return web.json_response(items)

    async def _events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        queue: asyncio.Queue[View] = asyncio.Queue(CLIENT_BACKLOG)
        self._clients[ws] = (queue, request.transport)
        writer = asyncio.create_task(self._write(ws, queue))
        try:
            async for message in ws:
                if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self._clients.pop(ws, None)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws
