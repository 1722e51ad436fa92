"""The imrobots pytest plugin (entry point ``pytest11``): fixtures for testing robots.

Fixtures:

* ``robot_chat``: an async factory, ``chat = await robot_chat(robot, platform="memory")``,
  whose robots, emulators and chats are stopped after the test.
* ``imrobots_platforms``: the platforms whose emulators can run here.

It needs no set-up: an ``async def`` test that uses imrobots' testing kit (it requests
the ``robot_chat`` fixture, or its module imports from :mod:`imrobots.testing`) runs on
pytest-asyncio even when the project keeps pytest-asyncio's default strict mode (the
plugin marks it ``asyncio``). Without pytest-asyncio installed, such a test fails with
one line saying what to install.

The conformance suite for platform plugins is a base class, not a fixture:
``imrobots.testing.conformance.PlatformConformance`` (nothing of it is registered
here, so no plugin's tests change by installing imrobots).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import pytest

from ..plugins import get_plugin_manager

HAS_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None

NEEDS_PYTEST_ASYNCIO = (
    "imrobots' testing kit runs async tests on pytest-asyncio, which is not installed: "
    "pip install pytest-asyncio"
)


def _uses_imrobots_testing(function: Any) -> bool:
    """Whether a test function uses imrobots' testing kit: it requests the ``robot_chat``
    fixture, or its module imported something from :mod:`imrobots.testing`."""
    try:
        if "robot_chat" in inspect.signature(function).parameters:
            return True
    except (TypeError, ValueError):
        pass
    for value in getattr(function, "__globals__", {}).values():
        module = getattr(value, "__module__", None) or getattr(value, "__name__", None)
        if isinstance(module, str) and module.startswith("imrobots.testing"):
            return True
    return False


def _asyncio_mode(config: pytest.Config) -> str:
    value = config.getoption("asyncio_mode", default=None)
    if value is None:
        with contextlib.suppress(ValueError):
            value = config.getini("asyncio_mode")
    return str(value or "strict")


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, Any]:
    """Mark ``async def`` tests that use the testing kit ``asyncio`` (innermost wrapper, so
    pytest-asyncio sees the mark when it converts the item)."""
    result = yield
    if not (inspect.iscoroutinefunction(obj) and _uses_imrobots_testing(obj)):
        return result
    items = result if isinstance(result, list) else [result]
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        if not HAS_PYTEST_ASYNCIO:
            item.add_marker(pytest.mark.usefixtures("_imrobots_needs_pytest_asyncio"))
        elif _asyncio_mode(item.config) != "auto" and item.get_closest_marker("asyncio") is None:
            item.add_marker(pytest.mark.asyncio)
    return result


@pytest.fixture
def _imrobots_needs_pytest_asyncio() -> None:
    pytest.fail(NEEDS_PYTEST_ASYNCIO, pytrace=False)


@pytest.fixture
def imrobots_platforms() -> list[str]:
    """Names of the platforms whose emulators can run in this environment."""
    manager = get_plugin_manager()
    available = {name for name, status in manager.platforms().items() if status.available}
    return ["memory", *sorted(set(manager.emulators()) & available)]


if HAS_PYTEST_ASYNCIO:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def robot_chat() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        """Start a robot on an emulator: ``chat = await robot_chat(robot, platform=...)``."""
        from .chat import robot_chat as open_chat

        async with contextlib.AsyncExitStack() as stack:

            async def start(robot: Any, **options: Any) -> Any:
                return await stack.enter_async_context(open_chat(robot, **options))

            yield start

else:  # pragma: no cover

    @pytest.fixture
    def robot_chat() -> None:
        pytest.fail(NEEDS_PYTEST_ASYNCIO, pytrace=False)
