"""Agents: anything that turns a request into text, normalised to one stream.

An agent may be:

* an async function returning ``str``;
* a sync function returning ``str`` (run in a thread, so it never blocks the loop);
* an async generator, or a sync generator (iterated in a thread), of text deltas
  or of the accumulated text so far;
* the seed's callback style: a function taking ``stream_callback`` that it calls
  with chunks like ``{"data": {"content": "..."}}``.

:func:`as_agent` wraps any of these in an :class:`Agent` whose :meth:`Agent.stream`
yields the accumulated answer so far, each time it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Literal

import attrs

from .models import Message
from .store import Turn

__all__ = [
    "Agent",
    "AgentRequest",
    "AnswerSource",
    "Turn",
    "accumulate",
    "as_agent",
]

ChunkMode = Literal["auto", "delta", "accumulated"]


@attrs.frozen(kw_only=True)
class AgentRequest:
    """What an agent is asked."""

    text: str
    """The user's question."""
    conversation_id: str
    sender_id: str
    """The chat id the seed passed to its agent: the sender's staff id."""
    sender_name: str | None = None
    history: tuple[Turn, ...] = ()
    """Earlier turns of this conversation, oldest first (bounded)."""
    message: Message | None = attrs.field(default=None, repr=False, eq=False)
    """The full message, for agents that want more than the text."""

    @classmethod
    def from_message(cls, message: Message, history: Iterable[Turn] = ()) -> AgentRequest:
        return cls(
            text=message.text,
            conversation_id=message.conversation.id,
            sender_id=message.sender.id,
            sender_name=message.sender.name,
            history=tuple(history),
            message=message,
        )


AnswerSource = str | Awaitable[str] | AsyncIterable[str] | Iterable[str]
"""What :meth:`Reply.stream` accepts: a str, an awaitable of one, or (a)sync iterables of str."""


async def _iterate_in_thread(iterable: Iterable[Any]) -> AsyncIterator[Any]:
    """Iterate a blocking iterable in a worker thread, yielding its items on the loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterable:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
        except BaseException as exc:  # handed over to the loop and re-raised there
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

    future = loop.run_in_executor(None, work)
    try:
        while True:
            kind, item = await queue.get()
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                break
    finally:
        stop.set()
        if future.done():
            await future


async def _raw_chunks(source: AnswerSource) -> AsyncIterator[str]:
    if isinstance(source, str):
        yield source
    elif isinstance(source, AsyncIterable):
        async for chunk in source:
            yield chunk
    elif inspect.isawaitable(source):
        yield await source
    elif isinstance(source, Iterable):
        async for chunk in _iterate_in_thread(source):
            yield chunk
    else:
        raise TypeError(
            f"cannot stream an answer from {type(source).__name__}: give a str, an awaitable "
            "of str, or a (async) iterable of str"
        )


def _chunk_text(chunk: object) -> str:
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, dict):  # the seed's {"data": {"content": "..."}} chunks
        data = chunk.get("data", chunk)
        content = data.get("content") if isinstance(data, dict) else None
        if isinstance(content, str):
            return content
    if chunk is None:
        return ""
    raise TypeError(f"agent produced a {type(chunk).__name__}, expected text")


async def accumulate(source: AnswerSource, *, mode: ChunkMode = "auto") -> AsyncIterator[str]:
    """Yield the accumulated text each time it grows.

    ``mode="delta"``: every chunk is appended. ``"accumulated"``: every chunk is
    the whole text so far. ``"auto"``: a chunk that starts with the text so far
    (and is longer) is taken as accumulated, anything else as a delta.
    """
    text = ""
    async for chunk in _raw_chunks(source):
        piece = _chunk_text(chunk)
        if not piece:
            continue
        if mode == "accumulated" or (
            mode == "auto" and text and piece.startswith(text) and len(piece) > len(text)
        ):
            new = piece
        else:
            new = text + piece
        if new != text:
            text = new
            yield text


@attrs.frozen
class Agent:
    """A normalised agent. Call :meth:`stream` to get the accumulated answer as it grows."""

    func: Callable[..., Any]
    mode: ChunkMode = "auto"
    name: str = ""
    owner: object = None
    """The object whose method ``func`` is, closed by :meth:`aclose`."""

    async def aclose(self) -> None:
        """Close the agent's resources (HTTP clients) if it has an ``aclose()``."""
        close = getattr(self.owner, "aclose", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result

    def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        return accumulate(self._source(request), mode=self.mode)

    def _source(self, request: AgentRequest) -> AnswerSource:
        func = self.func
        if _takes_stream_callback(func):
            return _callback_source(func, request)
        if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            result: AnswerSource = func(request)
            return result
        if inspect.isgeneratorfunction(func):
            return _lazy_sync_generator(func, request)
        return _sync_call(func, request)


def _takes_stream_callback(func: Callable[..., Any]) -> bool:
    try:
        return "stream_callback" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


class _lazy_sync_generator(Iterable[Any]):
    """Create the generator inside the worker thread: even its setup may block."""

    def __init__(self, func: Callable[..., Iterable[Any]], request: AgentRequest) -> None:
        self._func = func
        self._request = request

    def __iter__(self) -> Iterator[Any]:
        return iter(self._func(self._request))


async def _sync_call(func: Callable[..., Any], request: AgentRequest) -> AsyncIterator[str]:
    result = await asyncio.to_thread(func, request)
    if inspect.isawaitable(result):
        result = await result
    async for chunk in _raw_chunks(result):
        yield chunk


async def _callback_source(func: Callable[..., Any], request: AgentRequest) -> AsyncIterator[Any]:
    """Run a seed-style ``run(params=..., chatId=..., stream_callback=...)`` agent."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def callback(chunk: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            queue.put_nowait(("item", chunk))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("item", chunk))

    kwargs: dict[str, Any] = {"stream_callback": callback}
    params = inspect.signature(func).parameters
    if "params" in params:
        kwargs["params"] = request.text
    if "chatId" in params:
        kwargs["chatId"] = request.sender_id
    if "request" in params:
        kwargs["request"] = request

    async def run() -> None:
        try:
            if inspect.iscoroutinefunction(func):
                await func(**kwargs)
            else:
                result = await asyncio.to_thread(func, **kwargs)
                if inspect.isawaitable(result):
                    await result
        except BaseException as exc:
            queue.put_nowait(("error", exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            queue.put_nowait(("done", None))

    task = asyncio.ensure_future(run())
    try:
        while True:
            kind, item = await queue.get()
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                break
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def as_agent(obj: object, *, mode: ChunkMode | None = None) -> Agent:
    """Wrap a function, generator function or agent object as an :class:`Agent`.

    An agent object may declare ``stream_mode = "delta"`` (or ``"accumulated"``)
    to say what its chunks are; otherwise ``mode`` (default ``"auto"``) decides.
    """
    if isinstance(obj, Agent):
        return obj
    declared = getattr(obj, "stream_mode", None)
    chosen: ChunkMode = mode or (declared if declared in ("delta", "accumulated") else "auto")
    for attribute in ("stream", "answer", "run"):
        method = getattr(obj, attribute, None)
        if callable(method) and not isinstance(obj, type) and not inspect.isfunction(obj):
            return Agent(method, chosen, type(obj).__name__, obj)
    if callable(obj):
        return Agent(obj, chosen, getattr(obj, "__name__", type(obj).__name__))
    raise TypeError(f"{obj!r} is not an agent: expected a function or an object with .stream()")
