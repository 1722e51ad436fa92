"""Agents: chunks are deltas unless declared accumulated; blocking agents run on a bounded pool."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import ClassVar

import pytest

from imrobots.agents import (
    AgentExecutor,
    AgentRequest,
    accumulate,
    agent_executor,
    as_agent,
    current_executor,
    use_executor,
)

SNAPSHOTS = ("Hello", "Hello", "Hello world")
DELTAS = ("1", "12")


def request(text: str = "hi") -> AgentRequest:
    return AgentRequest(text=text, conversation_id="c1", sender_id="u1")


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [text async for text in stream]


def sync_chunks(request: AgentRequest, chunks: tuple[str, ...]) -> Iterator[str]:
    yield from chunks


async def async_chunks(chunks: tuple[str, ...]) -> AsyncIterator[str]:
    for chunk in chunks:
        yield chunk


# --- regression: deltas that look like snapshots are still deltas --------------------------


async def test_accumulate_takes_chunks_as_deltas_by_default() -> None:
    assert await collect(accumulate(async_chunks(DELTAS))) == ["1", "112"]
    assert await collect(accumulate(iter(DELTAS))) == ["1", "112"]


async def test_generator_agents_yield_deltas_by_default() -> None:
    def sync_agent(request: AgentRequest) -> Iterator[str]:
        yield from DELTAS

    async def async_agent(request: AgentRequest) -> AsyncIterator[str]:
        for chunk in DELTAS:
            yield chunk

    for agent in (sync_agent, async_agent):
        assert (await collect(as_agent(agent).stream(request())))[-1] == "112"


# --- snapshots only when declared ------------------------------------------------------------


async def test_accumulate_with_declared_snapshots() -> None:
    shown = await collect(accumulate(async_chunks(SNAPSHOTS), mode="accumulated"))
    assert shown == ["Hello", "Hello world"]


async def test_as_agent_with_declared_snapshots() -> None:
    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        for chunk in SNAPSHOTS:
            yield chunk

    shown = await collect(as_agent(agent, mode="accumulated").stream(request()))
    assert shown == ["Hello", "Hello world"]


async def test_agent_object_declares_snapshots_with_stream_mode() -> None:
    class Snapshots:
        stream_mode: ClassVar[str] = "accumulated"

        def stream(self, request: AgentRequest) -> Iterator[str]:
            yield from SNAPSHOTS

    shown = await collect(as_agent(Snapshots()).stream(request()))
    assert shown == ["Hello", "Hello world"]


async def test_undeclared_snapshots_are_taken_as_deltas() -> None:
    """No guessing: without a declaration, snapshots are appended like any delta."""
    shown = await collect(accumulate(async_chunks(SNAPSHOTS)))
    assert shown[-1] == "HelloHelloHello world"


async def test_the_accumulated_stream_can_be_streamed_again() -> None:
    """``reply.stream(self.ask(message))``: an agent's accumulated text passes through as is."""

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        for chunk in ("Hel", "lo", " world"):
            yield chunk

    async def passthrough(stream: AsyncIterator[str]) -> AsyncIterator[str]:
        async for text in stream:  # what Robot.ask does with the agent's stream
            yield text

    once = as_agent(agent).stream(request())
    shown = await collect(accumulate(passthrough(once)))
    assert shown == ["Hel", "Hello", "Hello world"]


@pytest.mark.parametrize("mode", ["auto", "snapshot"])
async def test_an_unknown_mode_is_an_error(mode: str) -> None:
    with pytest.raises(ValueError, match="delta"):
        await collect(accumulate(async_chunks(DELTAS), mode=mode))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delta"):
        as_agent(lambda request: "x", mode=mode)  # type: ignore[arg-type]

    class Declared:
        stream_mode = mode

        def stream(self, request: AgentRequest) -> str:
            return "x"

    with pytest.raises(ValueError, match="stream_mode"):
        as_agent(Declared())


# --- the other shapes still work -------------------------------------------------------------


async def test_functions_and_the_seed_callback_style() -> None:
    def sync_agent(request: AgentRequest) -> str:
        return f"sync: {request.text}"

    async def async_agent(request: AgentRequest) -> str:
        return f"async: {request.text}"

    def seed(params: str, chatId: str, stream_callback: object) -> None:
        assert callable(stream_callback)
        for chunk in ("a", "b", "c"):
            stream_callback({"data": {"content": chunk}})

    assert await collect(as_agent(sync_agent).stream(request("q"))) == ["sync: q"]
    assert await collect(as_agent(async_agent).stream(request("q"))) == ["async: q"]
    assert await collect(as_agent(seed).stream(request())) == ["a", "ab", "abc"]


async def test_an_agent_error_is_raised_to_the_consumer() -> None:
    def broken(request: AgentRequest) -> Iterator[str]:
        yield "partial"
        raise RuntimeError("the model fell over")

    with pytest.raises(RuntimeError, match="fell over"):
        await collect(as_agent(broken).stream(request()))


# --- blocking agents run on the executor set for them ------------------------------------------


@pytest.fixture
def executor() -> Iterator[AgentExecutor]:
    pool = agent_executor(4)
    yield pool
    pool.shutdown(wait=True)


async def test_use_executor_sets_and_restores_the_current_executor(
    executor: AgentExecutor,
) -> None:
    assert current_executor() is None
    with use_executor(executor) as chosen:
        assert chosen is executor and current_executor() is executor
        with use_executor(None):
            assert current_executor() is None
        assert current_executor() is executor
    assert current_executor() is None


async def test_every_blocking_shape_runs_on_the_executor(executor: AgentExecutor) -> None:
    def sync_agent(request: AgentRequest) -> str:
        return threading.current_thread().name

    def sync_generator(request: AgentRequest) -> Iterator[str]:
        yield threading.current_thread().name

    def seed(params: str, stream_callback: Callable[[object], None]) -> None:
        stream_callback({"data": {"content": threading.current_thread().name}})

    agents = (sync_agent, sync_generator, seed)
    with use_executor(executor):
        names = [(await collect(as_agent(a).stream(request())))[-1] for a in agents]
    assert all(name.startswith("imrobots-agent") for name in names), names
    # Without one, the loop's default executor runs them, as before.
    names = [(await collect(as_agent(a).stream(request())))[-1] for a in agents]
    assert not any(name.startswith("imrobots-agent") for name in names), names


async def test_context_variables_reach_the_agent_thread(executor: AgentExecutor) -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")
    variable.set("acme")

    def agent(request: AgentRequest) -> Iterator[str]:
        yield variable.get("unset")

    with use_executor(executor):
        assert await collect(as_agent(agent).stream(request())) == ["acme"]


async def test_a_generator_left_early_is_closed_in_its_thread(
    executor: AgentExecutor,
) -> None:
    closed = threading.Event()
    more = threading.Event()

    def agent(request: AgentRequest) -> Iterator[str]:
        try:
            yield "first"
            more.wait(timeout=5)
            yield "second"
        finally:
            closed.set()

    with use_executor(executor):
        stream = as_agent(agent).stream(request())
        assert await anext(stream) == "first"
        await stream.aclose()  # the consumer stops listening
    more.set()
    assert await asyncio.to_thread(closed.wait, 5)


async def test_concurrent_sync_agents_are_bounded_by_the_executor_not_the_default_pool() -> None:
    """24 agents blocking 1.5 s each: ~1.5 s on a 100-thread pool; the default pool of a
    2-core machine (6 threads) would take 6 s."""

    def slow(request: AgentRequest) -> str:
        time.sleep(1.5)  # a blocking agent, on purpose
        return "done"

    pool = agent_executor(100)
    try:
        with use_executor(pool):
            started = time.monotonic()
            results = await asyncio.gather(
                *(collect(as_agent(slow).stream(request())) for _ in range(24))
            )
            elapsed = time.monotonic() - started
    finally:
        pool.shutdown(wait=True)
    assert results == [["done"]] * 24
    assert elapsed < 3.5, f"24 blocking agents took {elapsed:.1f} s"


def test_a_thread_stuck_in_agent_code_does_not_keep_the_process_alive() -> None:
    """Issue 12, item 5: a ThreadPoolExecutor's threads are joined at interpreter exit, so
    a blocked sync agent kept `imrobots run` alive forever after SIGTERM."""
    code = (
        "import threading, time\n"
        "from imrobots.agents import agent_executor\n"
        "pool = agent_executor(2)\n"
        "started = threading.Event()\n"
        "pool.submit(lambda: (started.set(), threading.Event().wait()))\n"
        "assert started.wait(5)\n"
        "pool.shutdown(wait=False, cancel_futures=True)\n"
        "print('leaving')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "leaving", done.stderr


def test_the_executor_reuses_idle_threads_and_caps_them() -> None:
    pool = agent_executor(3)
    try:
        names = {pool.submit(lambda: threading.current_thread().name).result(5) for _ in range(20)}
        assert len(names) <= 3
        gate = threading.Event()
        futures = [pool.submit(gate.wait, 5) for _ in range(6)]
        gate.set()
        assert all(f.result(5) for f in futures)
        assert len(pool._threads) <= 3
    finally:
        pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(print)
