"""Built-in plugin: the in-memory platform, registered like any other platform."""

from __future__ import annotations

from collections.abc import Callable

from .platform import PlatformSpec
from .plugins import hookimpl


@hookimpl
def register_platforms(register: Callable[[PlatformSpec], None]) -> None:
    register(
        PlatformSpec(
            name="memory",
            factory="imrobots.memory:MemoryPlatform",
            settings="imrobots.memory:MemorySettings",
            description="In-process platform for tests and examples (no network)",
        )
    )


@hookimpl
def register_robots(register: Callable[..., None]) -> None:
    from .examples import SupportRobot

    register("support", SupportRobot)
