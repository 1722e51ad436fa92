"""Shared fixtures for the whole suite."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from imrobots.loop import new_event_loop
from imrobots.plugins import PluginManager, reset_plugin_manager

TEST_LOOP_ENV = "IMROBOTS_TEST_LOOP"
"""``uvloop``: run every async test on uvloop, the loop ``imrobots run`` uses where it is
installed (imrobots.loop), instead of asyncio's own. CI runs the engine and DingTalk tests
both ways."""


_TEST_LOOP = os.environ.get(TEST_LOOP_ENV, "").strip().lower()
if _TEST_LOOP not in ("", "asyncio"):  # the hook is there only then: it must name a loop

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], object]]:
        choice = _TEST_LOOP
        return {choice: lambda: new_event_loop({"IMROBOTS_LOOP": choice})}


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session, for tests that speak to a local server themselves."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    """A fresh plugin manager with only the built-in plugins (no entry points)."""
    pm = PluginManager(load_entry_points=False)
    reset_plugin_manager(pm)
    yield pm
    reset_plugin_manager(None)


# --- a real redis-server, for the Redis store's tests --------------------------------------

REDIS_START_DEADLINE = 10.0
"""Seconds a started redis-server may take to answer PING."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 without persistence, started and stopped by tests.

    Stopping and starting it again (same port, same password) is a Redis restart that
    loses every key, like a restart of a server that does not persist its data.
    """

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING (or fail after a deadline)."""
        executable = shutil.which("redis-server")
        assert executable is not None
        args = [executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        if self.password:
            args += ["--requirepass", self.password]
        log = self.directory / f"redis-{self.port}.log"
        with log.open("ab") as output:
            self.process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + REDIS_START_DEADLINE
        while not self._answers_ping():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}: {log.read_text()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within the deadline: {log}")
            time.sleep(0.01)  # polling the new process's port, not waiting for time to pass

    def _answers_ping(self) -> bool:
        command = b""
        if self.password:
            password = self.password.encode()
            command += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password)
        command += b"*1\r\n$4\r\nPING\r\n"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(command)
                reply = b""
                while b"PONG" not in reply and b"-" not in reply:
                    chunk = sock.recv(1024)
                    if not chunk:
                        return False
                    reply += chunk
                return b"+PONG" in reply
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # in case a test froze it
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _start_on_a_free_port(server: RedisServer) -> None:
    """Start ``server``, on another free port if another process took its port meanwhile."""
    for _ in range(2):
        try:
            server.start()
            return
        except RuntimeError:
            server.port = _free_port()
    server.start()


def _require_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; CI installs it)")
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        pytest.skip('the redis package is not installed: pip install "imrobots[redis]"')


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session, on a free port of 127.0.0.1. Tests share it, so each
    uses keys under a prefix of its own."""
    _require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    _start_on_a_free_port(server)
    yield server
    server.stop()


@pytest.fixture
def make_redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """A factory of dedicated, started redis-servers (for tests that stop or freeze one)."""
    _require_redis()
    servers: list[RedisServer] = []

    def make(*, password: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path, password=password)
        servers.append(server)
        _start_on_a_free_port(server)
        return server

    yield make
    for server in servers:
        server.stop()
