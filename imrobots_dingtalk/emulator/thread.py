"""Run a :class:`DingTalkEmulator` on its own event loop in a daemon thread.

The official ``dingtalk_stream`` SDK makes blocking ``requests`` calls on its
event loop; an emulator on that same loop would deadlock (PROTOCOLS 1.11). Use
this runner when the client under test blocks, or from synchronous tests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from .emulator import DingTalkEmulator

P = ParamSpec("P")
T = TypeVar("T")


class EmulatorThread:
    """A context manager owning a thread, its loop and an emulator on that loop.

    Example::

        with EmulatorThread(seed=1) as runner:
            runner.run(runner.emulator.add_app, "ding-app", "secret")
            os.environ["DINGTALK_OPENAPI_ENDPOINT"] = runner.base_url
            ...  # start the blocking client
            runner.call(runner.emulator.push_message, "ding-app", text="hi")
            runner.wait_for(lambda: len(runner.emulator.webhook_messages) == 1)
    """

    def __init__(self, *, call_timeout: float = 30.0, **emulator_kwargs: Any) -> None:
        self.emulator = DingTalkEmulator(**emulator_kwargs)
        self.call_timeout = call_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the emulator thread is not started")
        return self._loop

    @property
    def base_url(self) -> str:
        return self.emulator.base_url

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=main, name="dingtalk-emulator", daemon=True)
        thread.start()
        ready.wait(10)
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.emulator.start(), loop).result(10)
        except BaseException:
            self._shutdown_loop()
            raise

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.emulator.stop(), self._loop).result(10)
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- running things on the emulator's loop -------------------------------------

    def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` on the emulator loop; block for the result."""

        async def run() -> T:
            return await fn(*args, **kwargs)

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(self.call_timeout)

    async def acall(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like :meth:`call`, awaitable from another event loop."""

        async def run() -> T:
            return await fn(*args, **kwargs)

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return await asyncio.wrap_future(future)

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a plain function (e.g. ``set_latency``) on the emulator loop."""

        async def run() -> T:
            return fn(*args, **kwargs)

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return future.result(self.call_timeout)

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, *, what: str | None = None
    ) -> None:
        """Block until ``predicate()`` (evaluated on the emulator loop) holds."""
        future = asyncio.run_coroutine_threadsafe(
            self.emulator.wait_for(predicate, timeout, what=what), self.loop
        )
        future.result(timeout + 5)

    async def async_wait_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, *, what: str | None = None
    ) -> None:
        """:meth:`wait_for` for callers running their own event loop."""
        future = asyncio.run_coroutine_threadsafe(
            self.emulator.wait_for(predicate, timeout, what=what), self.loop
        )
        await asyncio.wrap_future(future)
