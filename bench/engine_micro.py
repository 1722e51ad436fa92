"""The engine's own CPU and memory per message and per answer, and aiohttp's per request.

    python bench/engine_micro.py              # every part, about 1 min
    python bench/engine_micro.py --part intake --messages 2000
    python bench/engine_micro.py --part answers --answers 1000
    python bench/engine_micro.py --part calls
    python bench/engine_micro.py --part http
    python bench/engine_micro.py --part call

``bench/engine.py`` measures the whole client over real sockets, beside the seed's
handler; on a machine shared with other work its CPU figures move by 20-30 % from
run to run. This bench takes the sockets and HTTP out, so a change to the engine
shows more clearly in its figures (each the best of several repeats, in CPU time;
still 10-20 % apart between runs on a busy machine):

- **intake**: DingTalk stream frames (as the emulator writes them) handed to the
  plugin's ``StreamConnection._on_text`` (parse, ack, convert) and on to a
  ``RobotRuntime`` whose robot answers nothing; CPU per message, then with
  ``tracemalloc`` the memory a message holds while in flight (peak) and after
  (retained: its dedupe record, kept for ``dedupe_ttl``).
- **answers**: ``--answers`` concurrent answers of the support robot on the DingTalk
  plugin (StandardCards, quota lifted), the agent streaming 100 chunks 50 ms apart;
  the plugin's HTTP calls are replaced by a stub that encodes the request body
  and answers ``{"result": true}``, so the figure is the engine's and the plugin's
  own work without aiohttp. Beside it, the floor: the same agent read alone (its
  sleeps and generator cost what they cost in every client). Then, with
  ``tracemalloc``, the memory an answer holds while streaming (peak / answers) and
  after it ended (retained / answers: history, feedback records).
- **calls**: the per-call and per-answer bookkeeping alone: a rate-limiter turn
  (``RateLimiter.acquire`` on a ``MemoryStore``, quota lifted) with DingTalk's limits and
  with Feishu's, and an answer's four signed feedback values.
- **http**: the client CPU of one aiohttp request as the plugins send them (the session
  :func:`imrobots.proxies.client_session` makes, a card update's body and headers, 50 at
  once, the server in a subprocess of its own): what every platform call costs before
  the engine's or the plugin's own work, and so the part of ``engine.py``'s client CPU
  per answer that is aiohttp's.
- **call**: the same request made by the DingTalk plugin itself (``DingTalkApi.call`` on
  the session ``DingTalkPlatform`` makes, with its headers, timeouts and trace configs):
  aiohttp's part and the plugin's own per call.

Everything runs on the loop ``imrobots run`` uses (:mod:`imrobots.loop`: uvloop where
installed; ``IMROBOTS_LOOP=asyncio`` for asyncio's own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

CHUNKS, DELAY = 100, 0.05
CALLS_PER_ANSWER = 7
"""What ``bench/engine.py``'s answers make over HTTP, counted at its emulator: a thinking
card, five updates and the final card (StandardCards at DingTalk's update interval)."""


def _app() -> Any:
    from imrobots_dingtalk.emulator.state import EmulatedApp

    return EmulatedApp(
        client_id="microapp",
        client_secret="s",
        robot_code="microapp",
        app_id="x",
        unified_app_id="y",
        corp_id="dingmicro",
        chatbot_user_id="$:LWCP_v1:$micro",
    )


def frame_text(app: Any, i: int) -> str:
    """A bot message push of conversation ``i``, as the emulator sends it."""
    from imrobots_dingtalk.emulator import frames

    now = int(time.time() * 1000)
    data = frames.build_bot_message(
        app,
        msg_id=f"msgMicro{i:08d}==",
        conversation_type="group",
        conversation_id=f"cidMicro{i}=",
        conversation_title=None,
        sender_staff_id=f"u{i}",
        sender_nick="Alice",
        at_robot=True,
        msgtype="text",
        text=f"question {i}",
        content=None,
        create_at_ms=now,
        session_webhook="http://127.0.0.1:9/robot/sendBySession?session=micro",
        session_webhook_expired_ms=now + 3_600_000,
    )
    frame = frames.build_frame(
        "CALLBACK", "/v1.0/im/bot/messages/get", f"micro_{i:x}", data, app_id="x"
    )
    return json.dumps(frame, ensure_ascii=False)


def platform(rate: float = 1_000_000) -> Any:
    from imrobots import Secret
    from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

    settings = DingTalkSettings(
        client_id="microapp",
        client_secret=Secret("s"),
        openapi_endpoint="http://127.0.0.1:9",
        card_mode="standard",
        app_rate=rate,
    )
    return DingTalkPlatform(settings, stream=False)


@contextlib.contextmanager
def stub_http() -> Iterator[list[int]]:
    """Replace the plugin's HTTP calls by a stub while inside; gives the call counter. The
    real methods come back on leaving (``--part call`` measures them after ``answers``)."""
    from imrobots.platform import dump_json
    from imrobots_dingtalk.api import DingTalkApi

    calls = [0]
    real = DingTalkApi.call, DingTalkApi.access_token

    async def call(self: Any, method: str, path: str, body: Any, **_: Any) -> Any:
        calls[0] += 1
        dump_json(body)  # what _send does with it
        await asyncio.sleep(0)  # a response comes later
        return {"result": True}

    async def access_token(self: Any) -> str:
        return "token"

    DingTalkApi.call = call  # type: ignore[method-assign]
    DingTalkApi.access_token = access_token  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        DingTalkApi.call, DingTalkApi.access_token = real  # type: ignore[method-assign]


# --------------------------------------------------------------------------- intake


async def intake(messages: int, repeats: int) -> dict[str, float]:
    from imrobots import Robot, RobotRuntime, RuntimeOptions, Secret
    from imrobots_dingtalk.connection import StreamConnection, _Live

    class Silent(Robot):
        async def on_message(self, message: Any, reply: Any) -> None:
            return None

    class Socket:
        closed = False

        async def send_str(self, text: str) -> None:
            return None

    plat = platform()
    runtime = RobotRuntime(name="micro", robot=Silent(), platform=plat, options=RuntimeOptions())
    await runtime.start()
    connection = StreamConnection(
        None,  # type: ignore[arg-type]
        gateway="http://127.0.0.1:9",
        client_id="microapp",
        client_secret=Secret("s"),
        subscriptions=(),
        handler=plat._on_frame,
    )
    loop = asyncio.get_running_loop()
    live = _Live(number=1, ws=Socket(), opened_at=0, last_seen=0, ended=loop.create_future())  # type: ignore[arg-type]
    app, made = _app(), 0

    async def batch() -> tuple[float, list[str]]:
        nonlocal made
        texts = [frame_text(app, made + i) for i in range(messages)]
        made += messages
        started = time.process_time()
        for text in texts:
            await connection._on_text(live, text)
            await asyncio.sleep(0)  # each push arrives in a loop iteration of its own
        await runtime.wait_idle()
        return time.process_time() - started, texts

    best = min([(await batch())[0] for _ in range(repeats)])
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    _, texts = await batch()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = sum(len(t) for t in texts)  # the frames themselves, made before the batch
    await runtime.stop()
    return {
        "cpu_us": best / messages * 1e6,
        "peak_bytes": (peak - before - held) / messages,
        "retained_bytes": (current - before - held) / messages,
    }


# --------------------------------------------------------------------------- answers


async def _model(request: Any = None) -> AsyncIterator[str]:
    for i in range(CHUNKS):
        await asyncio.sleep(DELAY)
        yield f"w{i} "


async def floor(answers: int) -> float:
    """CPU per 1,000 answers of the agent alone (read and accumulated, nothing else)."""

    async def read() -> None:
        text = ""
        async for chunk in _model():
            text += chunk

    started = time.process_time()
    await asyncio.gather(*(read() for _ in range(answers)))
    return (time.process_time() - started) / answers * 1000


async def answers_run(answers: int, *, traced: bool) -> dict[str, float]:
    with stub_http() as calls:
        return await _answers(answers, traced=traced, calls=calls)


async def _answers(answers: int, *, traced: bool, calls: list[int]) -> dict[str, float]:
    from imrobots import RobotRuntime, RuntimeOptions
    from imrobots.examples import SupportRobot
    from imrobots_dingtalk.connection import _parse_frame

    plat = platform()
    runtime = RobotRuntime(
        name="micro", robot=SupportRobot(agent=_model), platform=plat, options=RuntimeOptions()
    )
    await runtime.start()
    app = _app()
    events = [plat.convert(_parse_frame(frame_text(app, i)))[1] for i in range(answers)]
    if traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if traced else 0
    started = time.process_time()
    for index, event in enumerate(events):
        await runtime.handle(event)
        if index % 20 == 19:
            await asyncio.sleep(0)  # as the stream reader's slices hand them over
    peak = 0
    while runtime._pending:
        await asyncio.sleep(0.05)
        if traced:
            peak = max(peak, tracemalloc.get_traced_memory()[0])
    cpu = time.process_time() - started
    retained = tracemalloc.get_traced_memory()[0] if traced else 0
    if traced:
        tracemalloc.stop()
    await runtime.stop()
    return {
        "cpu_per_1000": cpu / answers * 1000,
        "calls_per_answer": calls[0] / answers,
        "peak_bytes": (peak - before) / answers,
        "retained_bytes": (retained - before) / answers,
    }


# --------------------------------------------------------------------------- HTTP floor

_SERVER = """
import asyncio, sys
from aiohttp import web

async def answer(request):
    await request.read()
    return web.json_response({"result": True})

async def main():
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def _server() -> AsyncIterator[int]:
    """The answering server of ``_SERVER`` in a subprocess of its own; gives its port."""
    import sys

    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SERVER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        yield int(await server.stdout.readline())
    finally:
        server.stdin.close()
        await server.wait()


async def _cpu_per_call(
    one: Callable[[], Awaitable[None]], requests: int, concurrency: int
) -> float:
    """CPU (us) per ``one()``, ``concurrency`` at once, after a warm-up that opens the
    connections."""

    async def batch(count: int) -> None:
        for _ in range(count // concurrency):
            await asyncio.gather(*(one() for _ in range(concurrency)))

    await batch(5 * concurrency)  # connections opened, code warm
    started = time.process_time()
    await batch(requests)
    return (time.process_time() - started) / requests * 1e6


_CARD = {"cardBizId": "c" * 32, "cardData": json.dumps({"markdown": "w1 " * 150})}
"""A card update's body, as the bench's answers send them."""


async def http_floor(requests: int, concurrency: int = 50) -> float:
    """Client CPU per request (us) of the aiohttp session a plugin makes
    (:func:`imrobots.proxies.client_session`), sending what a DingTalk card update sends
    to a server in a subprocess of its own: what each platform call costs before any
    of the engine's or the plugin's own work."""
    from imrobots.proxies import client_session

    body = json.dumps(_CARD).encode()
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "x-acs-dingtalk-access-token": "t" * 32,
    }
    async with _server() as port, client_session() as session:
        url = f"http://127.0.0.1:{port}/v1.0/im/robots/interactiveCards"

        async def one() -> None:
            async with session.put(url, data=body, headers=headers) as response:
                json.loads(await response.read())

        return await _cpu_per_call(one, requests, concurrency)


async def call_floor(requests: int, concurrency: int = 50) -> float:
    """Client CPU per call (us) of a DingTalk card update as the plugin makes it:
    ``DingTalkApi.call`` on the session ``DingTalkPlatform`` makes (headers, body, its
    timeouts, its trace configs, the answer read and parsed), to the server of
    :func:`http_floor` (the access token is taken as cached)."""
    from imrobots import Secret
    from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

    async with _server() as port:
        settings = DingTalkSettings(
            client_id="microapp",
            client_secret=Secret("s"),
            openapi_endpoint=f"http://127.0.0.1:{port}",
            card_mode="standard",
        )
        plat = DingTalkPlatform(settings, stream=False)
        api = plat.api
        api._token, api._token_expires = "t" * 32, time.monotonic() + 3600
        try:

            async def one() -> None:
                await api.call(
                    "PUT", "/v1.0/im/robots/interactiveCards", _CARD, card_update=True, card=True
                )

            return await _cpu_per_call(one, requests, concurrency)
        finally:
            await plat.close()


# --------------------------------------------------------------------------- per call


async def limiter_floor(calls: int) -> dict[str, float]:
    """CPU per ``RateLimiter.acquire`` (us) on a ``MemoryStore``, quota lifted (nothing
    waits), a stream's mix (one send, six updates at BACKGROUND priority) over 300
    conversations: with DingTalk's limits (one per API) and with Feishu's (two per API,
    per chat, per card)."""
    from imrobots.platform import Op, RateLimit, Scope
    from imrobots.ratelimit import CallScope, Priority, RateLimiter
    from imrobots.store import MemoryStore
    from imrobots_dingtalk.platform import _api_names

    layouts: dict[str, dict[str, Any]] = {
        "dingtalk": {
            "limits": (RateLimit(scope=Scope.API, rate=1e6),),
            "api_names": _api_names("standard"),
        },
        "feishu": {
            "limits": (
                RateLimit(scope=Scope.API, rate=1e6, window=0.1),
                RateLimit(scope=Scope.API, rate=1e6, window=60.0),
                RateLimit(scope=Scope.CONVERSATION, rate=1e6, window=0.25),
                RateLimit(scope=Scope.CARD, rate=1e6, window=0.25),
            )
        },
    }
    scopes = [
        CallScope(
            op=Op.UPDATE_CARD if i % 7 else Op.SEND_CARD,
            conversation=f"dingtalk:group:cid{i % 300}",
            card=f"card{i % 300}",
        )
        for i in range(calls)
    ]
    result = {}
    for name, layout in layouts.items():
        best = float("inf")
        for _ in range(3):
            limiter = RateLimiter(MemoryStore(), "micro", headroom=0.9, **layout)
            started = time.process_time()
            for i, scope in enumerate(scopes):
                await limiter.acquire(
                    scope, priority=Priority.BACKGROUND if i % 7 else Priority.FIRST
                )
            best = min(best, (time.process_time() - started) / calls * 1e6)
        result[name] = best
    return result


def feedback_floor(answers: int) -> float:
    """CPU (us) of the four signed feedback values of one answer."""
    from imrobots.feedback import FeedbackSigner

    signer = FeedbackSigner.from_secret("k" * 32)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for i in range(answers):
            signer.values("micro", f"msgMicro{i:08d}==", conversation="cidMicro1=", card="c" * 32)
        best = min(best, (time.process_time() - started) / answers * 1e6)
    return best


# --------------------------------------------------------------------------- main


def _best(runs: list[dict[str, float]], key: str) -> float:
    return min(r[key] for r in runs)


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)
    out: Callable[[str], None] = print
    if args.part in ("intake", "all"):
        result = await intake(args.messages, args.repeats)
        out(
            f"intake: {result['cpu_us']:.1f} us CPU per message (best of {args.repeats} x "
            f"{args.messages:,}); {result['peak_bytes'] / 1024:.2f} KB per message in flight, "
            f"{result['retained_bytes']:.0f} bytes retained after (its dedupe record)"
        )
    if args.part in ("answers", "all"):
        runs = [await answers_run(args.answers, traced=False) for _ in range(args.repeats_answers)]
        alone = min([await floor(args.answers) for _ in range(args.repeats_answers)])
        traced = await answers_run(args.answers, traced=True)
        cpu = _best(runs, "cpu_per_1000")
        out(
            f"answers: {cpu:.2f} s CPU per 1,000 answers ({args.answers:,} at once, "
            f"{runs[0]['calls_per_answer']:.1f} platform calls each, HTTP stubbed; best of "
            f"{args.repeats_answers}); the agent alone: {alone:.2f} s, so the engine and plugin "
            f"{cpu - alone:.2f} s ({(cpu - alone) / CHUNKS * 1000:.1f} us per chunk, all in)"
        )
        out(
            f"answers: {traced['peak_bytes'] / 1024:.1f} KB per answer while streaming, "
            f"{traced['retained_bytes'] / 1024:.2f} KB retained per answer after (history, "
            f"feedback record)"
        )
    if args.part in ("call", "all"):
        per_call = min([await call_floor(args.requests) for _ in range(3)])
        out(
            f"call: {per_call:.0f} us client CPU per DingTalk card update through the plugin's "
            f"DingTalkApi.call and session (best of 3 x {args.requests:,}, 50 at once); at "
            f"{CALLS_PER_ANSWER} calls an answer: {per_call * CALLS_PER_ANSWER / 1000:.2f} s "
            f"per 1,000 answers"
        )
    if args.part in ("calls", "all"):
        limiter = await limiter_floor(20_000)
        out(
            f"calls: {limiter['dingtalk']:.1f} us CPU per rate-limiter turn with DingTalk's "
            f"limits, {limiter['feishu']:.1f} us with Feishu's (MemoryStore, nothing waits, "
            f"best of 3 x 20,000); {feedback_floor(20_000):.1f} us for an answer's four signed "
            f"feedback values"
        )
    if args.part in ("http", "all"):
        per_request = min([await http_floor(args.requests) for _ in range(3)])
        out(
            f"http: {per_request:.0f} us client CPU per aiohttp request (best of 3 x "
            f"{args.requests:,}, 50 at once, a card update's body and headers, the server in "
            f"another process); at the {CALLS_PER_ANSWER} platform calls of an answer: "
            f"{per_request * CALLS_PER_ANSWER / 1000:.2f} s per 1,000 answers"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part",
        choices=("intake", "answers", "calls", "http", "call", "all"),
        default="all",
        help="what to measure (default: all of them; the module docstring says what each is)",
    )
    parser.add_argument("--messages", type=int, default=2000, help="pushes per intake batch")
    parser.add_argument("--repeats", type=int, default=5, help="intake batches (best taken)")
    parser.add_argument("--answers", type=int, default=300, help="concurrent answers")
    parser.add_argument("--repeats-answers", type=int, default=2, help="answer runs (best taken)")
    parser.add_argument("--requests", type=int, default=3000, help="HTTP requests per run")
    # the loop `imrobots run` runs robots on (uvloop where installed; IMROBOTS_LOOP=asyncio)
    from imrobots.loop import run

    run(main(parser.parse_args()))
