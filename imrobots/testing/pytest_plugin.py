"""The imrobots pytest plugin (entry point ``pytest11``): fixtures for testing robots.

Fixtures:

* ``robot_chat``: an async factory, ``chat = await robot_chat(robot, platform="memory")``,
  whose robots, emulators and chats are stopped after the test.
* ``imrobots_platforms``: the platforms whose emulators can run here.

The conformance suite for platform plugins is a base class, not a fixture:
``imrobots.testing.conformance.PlatformConformance`` (nothing of it is registered
here, so no plugin's tests change by installing imrobots).

The async fixture needs pytest-asyncio; without it the plugin loads and its
fixture explains what to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ..plugins import get_plugin_manager

HAS_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None


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
        pytest.skip("the robot_chat fixture needs pytest-asyncio: pip install pytest-asyncio")
