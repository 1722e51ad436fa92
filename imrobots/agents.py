"""Agents: anything that turns a request into text, normalised to one stream.

An agent may be:

* an async function returning ``str``;
* a sync function returning ``str`` (run in a thread, so it never blocks the loop);
* an async generator, or a sync generator (iterated in a thread), of text deltas
  or, when declared, of the accumulated text so far;
* the seed's callback style: a function taking ``stream_callback`` that it calls
  with chunks like ``{"data": {"content": "..."}}``.

:func:`as_agent` wraps any of these in an :class:`Agent` whose :meth:`Agent.stream`
yields the accumulated answer so far, each time it grows.

Chunks are **deltas** (appended to the text so far) unless declared otherwise;
nothing is guessed. An agent whose chunks are each the whole text so far
(snapshots) says so with ``as_agent(obj, mode="accumulated")``, a
``stream_mode = "accumulated"`` attribute on the agent object, or
``accumulate(source, mode="accumulated")``. The text :func:`accumulate` yields is
:class:`AccumulatedText`, which any later :func:`accumulate` takes as the whole
text, so an agent's accumulated stream (``Robot.ask``) can be given to
``reply.stream`` as it is.

Blocking user code (sync functions, sync generators, sync callback-style agents)
runs in a worker thread of the executor set with :func:`use_executor` (the
runtime sets one, bounded by its ``max_concurrent``, around each answer), or of
the event loop's default executor when none is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import queue
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from concurrent.futures import Executor, Future
from typing import Any, Literal, Protocol, TypeVar

import attrs

from .models import Message
from .payloads import displayable, valid_text
from .store import Turn

__all__ = [
    "AccumulatedText",
    "Agent",
    "AgentExecutor",
    "AgentRequest",
    "AnswerSource",
    "ChunkMode",
    "Turn",
    "accumulate",
    "agent_executor",
    "as_agent",
    "current_executor",
    "use_executor",
]

_T = TypeVar("_T")

ChunkMode = Literal["delta", "accumulated"]
"""What an agent's chunks are: ``"delta"`` (appended; the default) or ``"accumulated"``
(each one the whole text so far). There is no guessing mode: ``"auto"`` was removed
because it garbled both repeated snapshots and deltas that start like the text so far."""


def _check_mode(mode: object, what: str) -> ChunkMode:
    if mode == "delta":
        return "delta"
    if mode == "accumulated":
        return "accumulated"
    removed = " ('auto' was removed: nothing is guessed)" if mode == "auto" else ""
    raise ValueError(
        f"unknown {what} {mode!r}{removed}: chunks are 'delta' (the default) or 'accumulated'"
    )


class AccumulatedText(str):
    """Text that is the whole answer so far, not a delta.

    :func:`accumulate` yields these. In any mode, :func:`accumulate` takes a chunk of
    this type as the whole text so far (it replaces, never appends), so an
    accumulated stream can be accumulated again: ``reply.stream(self.ask(message))``
    works because :meth:`Robot.ask <imrobots.Robot.ask>` passes its agent's
    accumulated text through. Yield ``AccumulatedText(text)`` from a generator to
    mark one chunk as a snapshot.
    """

    __slots__ = ()


# --- the executor blocking agent code runs on -----------------------------------------------

_executor: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "imrobots_agent_executor", default=None
)


class AgentExecutor(Executor):
    """A bounded pool of **daemon** threads for blocking agent code.

    Unlike :class:`~concurrent.futures.ThreadPoolExecutor`, whose threads the
    interpreter joins at exit, a thread stuck in user code (a model call without a
    timeout, ``input()``...) never keeps the process alive: ``imrobots run`` exits
    within its grace period on SIGTERM whatever the agent is doing. Threads start on
    demand, up to ``max_workers``, and are named ``{thread_name_prefix}-N``; idle ones
    are reused. :meth:`shutdown` never waits for a task that is already running unless
    ``wait`` is true.
    """

    def __init__(self, max_workers: int, *, thread_name_prefix: str = "imrobots-agent") -> None:
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._threads: set[threading.Thread] = set()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._shut = False

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` in a pool thread. Raises ``RuntimeError`` after
        :meth:`shutdown`."""
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot run agent code: the agent executor was shut down")
            future: Future[_T] = Future()
            self._work.put(_WorkItem(future, functools.partial(fn, *args, **kwargs)))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._run,
                    name=f"{self._prefix}-{len(self._threads)}",
                    daemon=True,
                )
                self._threads.add(thread)
                thread.start()
        return future

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            item.run()
            del item  # drop the result before waiting for more work
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with ``cancel_futures``, cancel what has not started. With
        ``wait``, join the threads (which then finish what runs); without, return at once."""
        with self._lock:
            self._shut = True
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item.future.cancel()
            for _ in self._threads:
                self._work.put(None)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()


@attrs.define
class _WorkItem:
    future: Future[Any]
    call: Callable[[], Any]

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.call()
        except BaseException as exc:  # handed to whoever waits on the future
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


def agent_executor(max_workers: int) -> AgentExecutor:
    """A thread pool for blocking agents: at most ``max_workers`` daemon threads named
    ``imrobots-agent-N`` (:class:`AgentExecutor`).

    Whoever makes it shuts it down (``executor.shutdown()``) when done with it.
    """
    return AgentExecutor(max_workers, thread_name_prefix="imrobots-agent")


def current_executor() -> Executor | None:
    """The executor set by :func:`use_executor` here, or ``None`` (the loop's default one)."""
    return _executor.get()


@contextlib.contextmanager
def use_executor(executor: Executor | None) -> Iterator[Executor | None]:
    """Run blocking agent code started inside this block on ``executor``.

    The choice is a :mod:`contextvars` variable: it holds in this task and in the
    tasks it creates, and is restored on leaving the block. ``None`` means the
    event loop's default executor (which is small: ``min(32, CPUs + 4)`` threads).
    """
    token = _executor.set(executor)
    try:
        yield executor
    finally:
        _executor.reset(token)


def _submit_blocking(func: Callable[..., _T], /, *args: Any, **kwargs: Any) -> asyncio.Future[_T]:
    """Run ``func`` on the current agent executor, with this context's variables."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return loop.run_in_executor(_executor.get(), call)


async def _run_blocking(func: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Like :func:`asyncio.to_thread`, on the current agent executor."""
    return await _submit_blocking(func, *args, **kwargs)


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
"""What :meth:`Reply.stream` accepts: a str, an awaitable of one, or (a)sync iterables of str.

The items of an iterable are deltas, except :class:`AccumulatedText` items, which
are the whole text so far."""


async def _iterate_in_thread(iterable: Iterable[Any]) -> AsyncGenerator[Any, None]:
    """Iterate a blocking iterable in a worker thread, yielding its items on the loop."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()
    loop = asyncio.get_running_loop()

    def work() -> None:
        iterator: Iterator[Any] | None = None
        try:
            iterator = iter(iterable)
            for item in iterator:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
        except BaseException as exc:  # handed over to the loop and re-raised there
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))
        finally:
            close = getattr(iterator, "close", None)
            if stop.is_set() and callable(close):
                # A generator left early runs its finally blocks now, in its own thread;
                # nobody is listening any more, so an error there is dropped.
                with contextlib.suppress(Exception):
                    close()

    future = _submit_blocking(work)
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


async def _raw_chunks(source: AnswerSource) -> AsyncGenerator[str, None]:
    if isinstance(source, str):
        yield source
    elif isinstance(source, AsyncIterable):
        async with _closing(source):
            async for chunk in source:
                yield chunk
    elif inspect.isawaitable(source):
        yield await source
    elif isinstance(source, Iterable):
        async with contextlib.aclosing(_iterate_in_thread(source)) as chunks:
            async for chunk in chunks:
                yield chunk
    else:
        raise TypeError(
            f"cannot stream an answer from {type(source).__name__}: give a str, an awaitable "
            "of str, or a (async) iterable of str"
        )


@contextlib.asynccontextmanager
async def _closing(source: object) -> AsyncGenerator[None, None]:
    """Close an async generator when done with it, even when left early (its finally blocks
    then run at once, not whenever it is garbage collected)."""
    try:
        yield
    finally:
        if inspect.isasyncgen(source):
            await source.aclose()


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


def accumulate(source: AnswerSource, *, mode: ChunkMode = "delta") -> AsyncGenerator[str, None]:
    """Yield the accumulated text (as :class:`AccumulatedText`) each time it changes.

    ``mode="delta"`` (the default): every chunk is appended to the text so far.
    ``"accumulated"``: every chunk is the whole text so far (a snapshot). In both
    modes an :class:`AccumulatedText` chunk is a snapshot. Nothing is guessed: a
    repeated snapshot in delta mode is appended again.

    :raises ValueError: at once, for a ``mode`` other than those two.
    """
    return _accumulate(source, _check_mode(mode, "mode"))


class _Progress(Protocol):
    """Who follows an answer from inside :func:`_accumulate` (the robot's
    :class:`~imrobots.robot.AgentAnswer`): given each text before it is yielded, and
    told when the agent ended normally."""

    answer: str

    async def _finish(self) -> None: ...


async def _accumulate(
    source: AnswerSource, mode: ChunkMode, into: _Progress | None = None
) -> AsyncGenerator[str, None]:
    # An async iterable is read directly, not through _raw_chunks: this runs once per
    # chunk of every answer, so each generator layer saved counts. For the same reason
    # ``into`` is told each text here rather than by a layer wrapping this generator.
    chunks = source if isinstance(source, AsyncIterable) else _raw_chunks(source)
    text: str = ""
    raw: str | None = None  # the text as the agent gave it, once it held a lone surrogate
    try:
        async for chunk in chunks:
            if isinstance(chunk, AccumulatedText):
                raw = None  # a snapshot: it replaces whatever came before
                if chunk != text:
                    text = chunk
                    if into is not None:
                        into.answer = text
                    yield chunk  # already the whole text: passed through, not copied
                continue
            piece = chunk if type(chunk) is str else _chunk_text(chunk)
            if raw is None and not piece.isascii() and not valid_text(piece):
                raw = text  # rare: from here on the text shown is the agent's, cleaned
            if raw is not None:
                # a lone surrogate shows as U+FFFD; the two halves of a character cut
                # between two chunks join up again when the second comes
                raw = piece if mode == "accumulated" else raw + piece
                shown = displayable(raw)
                if shown != text:
                    text = AccumulatedText(shown)
                    if into is not None:
                        into.answer = text
                    yield text
                continue
            if not piece or (mode == "accumulated" and piece == text):
                continue
            text = AccumulatedText(piece if mode == "accumulated" else text + piece)
            if into is not None:
                into.answer = text
            yield text
        if into is not None:
            await into._finish()  # the agent ended: not when the reader left early
    finally:
        if inspect.isasyncgen(chunks):
            await chunks.aclose()


def _validate_mode(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_mode(value, "mode")


_SourceKind = Literal["async", "callback", "generator", "call"]


@attrs.frozen
class Agent:
    """A normalised agent. Call :meth:`stream` to get the accumulated answer as it grows."""

    func: Callable[..., Any]
    mode: ChunkMode = attrs.field(default="delta", validator=_validate_mode)
    """What the agent's chunks are: ``"delta"`` (the default) or ``"accumulated"``."""
    name: str = ""
    owner: object = None
    """The object whose method ``func`` is, closed by :meth:`aclose`."""
    _kind: _SourceKind = attrs.field(init=False, repr=False, eq=False)
    """How ``func`` gives its answer: read once here, not per answer (``inspect.signature``
    alone costs about 10 us)."""

    @_kind.default
    def _read_kind(self) -> _SourceKind:
        func = self.func
        if _takes_stream_callback(func):
            return "callback"
        if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            return "async"
        if inspect.isgeneratorfunction(func):
            return "generator"
        return "call"

    async def aclose(self) -> None:
        """Close the agent's resources (HTTP clients) if it has an ``aclose()``."""
        close = getattr(self.owner, "aclose", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result

    def stream(self, request: AgentRequest) -> AsyncGenerator[str, None]:
        """The accumulated answer (:class:`AccumulatedText`), each time it changes."""
        return accumulate(self._source(request), mode=self.mode)

    def _stream_into(self, request: AgentRequest, into: _Progress) -> AsyncGenerator[str, None]:
        """:meth:`stream`, telling ``into`` each text and the agent's normal end."""
        return _accumulate(self._source(request), self.mode, into)

    def _source(self, request: AgentRequest) -> AnswerSource:
        func, kind = self.func, self._kind
        if kind == "async":
            result: AnswerSource = func(request)
            return result
        if kind == "callback":
            return _callback_source(func, request)
        if kind == "generator":
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
    result = await _run_blocking(func, request)
    if inspect.isawaitable(result):
        result = await result
    async with contextlib.aclosing(_raw_chunks(result)) as chunks:
        async for chunk in chunks:
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
                result = await _run_blocking(func, **kwargs)
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

    Its chunks are deltas unless declared to be the accumulated text so far:
    ``mode="accumulated"`` here, or a ``stream_mode = "accumulated"`` attribute on
    the agent object (``mode`` wins over ``stream_mode``).

    :raises ValueError: a ``mode`` or ``stream_mode`` other than ``"delta"`` or
        ``"accumulated"``.
    """
    chosen: ChunkMode | None = None if mode is None else _check_mode(mode, "mode")
    if isinstance(obj, Agent):
        return obj if chosen is None else attrs.evolve(obj, mode=chosen)
    declared = getattr(obj, "stream_mode", None)
    if chosen is None:
        chosen = "delta" if declared is None else _check_mode(declared, "stream_mode")
    for attribute in ("stream", "answer", "run"):
        method = getattr(obj, attribute, None)
        if callable(method) and not isinstance(obj, type) and not inspect.isfunction(obj):
            return Agent(method, chosen, type(obj).__name__, obj)
    if callable(obj):
        return Agent(obj, chosen, getattr(obj, "__name__", type(obj).__name__))
    raise TypeError(f"{obj!r} is not an agent: expected a function or an object with .stream()")
