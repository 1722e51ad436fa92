"""Which event loop the command line runs robots on: uvloop where it is installed.

A robot spends most of its CPU in the event loop itself: every agent chunk is a timer
and a task wake-up, every platform call a few transport writes and reads. uvloop (a
well-kept libuv-based loop, a required package on Linux and macOS) does that work in
C; ``bench/engine.py`` measures about 13 % less CPU per answer and shorter loop stalls
with it. It has no Windows build; there, and wherever it cannot be imported, asyncio's
own loop runs, which behaves the same, only slower.

``IMROBOTS_LOOP`` chooses (case and surrounding spaces ignored): ``auto`` (the
default: uvloop if importable), ``uvloop`` (required: an error if it is not installed)
or ``asyncio`` (asyncio's own loop, for code that needs it, a debugger that does not
follow uvloop, or to compare). One difference the engine cares about: uvloop's
``loop.time()`` is read once per loop iteration, in milliseconds, so the engine's clock
is :func:`time.monotonic` (:class:`~imrobots.clock.SystemClock`) on either loop.

:func:`new_event_loop` is the loop factory; :func:`run` is :func:`asyncio.run` on it;
:func:`chosen_loop` says which loop they would make, and :func:`fallback_warning` whether
``auto`` falls back to asyncio's where uvloop was expected. Robots embedded in an
application run on whatever loop the application runs.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Literal, TypeVar

from .errors import ConfigError

__all__ = [
    "LOOP_ENV",
    "LoopChoice",
    "chosen_loop",
    "fallback_warning",
    "loop_choice",
    "loop_name",
    "new_event_loop",
    "run",
]

T = TypeVar("T")

LOOP_ENV = "IMROBOTS_LOOP"
"""The environment variable that chooses the loop: ``auto``, ``uvloop`` or ``asyncio``."""

LoopChoice = Literal["auto", "uvloop", "asyncio"]
_CHOICES: tuple[LoopChoice, ...] = ("auto", "uvloop", "asyncio")


def loop_choice(env: Mapping[str, str] | None = None) -> LoopChoice:
    """The loop ``IMROBOTS_LOOP`` asks for (``auto`` when unset or empty).

    :raises ConfigError: for any other value (the message lists the valid ones)."""
    value = (os.environ if env is None else env).get(LOOP_ENV, "").strip().lower() or "auto"
    for choice in _CHOICES:
        if value == choice:
            return choice
    raw = (os.environ if env is None else env).get(LOOP_ENV, "")
    raise ConfigError(
        f"{LOOP_ENV}={raw!r} is not a loop this knows: use auto (uvloop when installed, "
        "the default), uvloop or asyncio"
    )


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _factory(env: Mapping[str, str] | None) -> Callable[[], asyncio.AbstractEventLoop]:
    choice = loop_choice(env)
    if choice == "asyncio":
        return asyncio.new_event_loop
    factory = _uvloop_factory()
    if factory is not None:
        return factory
    if choice == "uvloop":
        raise ConfigError(
            f'{LOOP_ENV}=uvloop but uvloop is not installed: pip install "uvloop>=0.19" '
            "(it has no Windows build), or unset the variable"
        )
    return asyncio.new_event_loop


def chosen_loop(env: Mapping[str, str] | None = None) -> Literal["uvloop", "asyncio"]:
    """The loop :func:`new_event_loop` would make: ``"uvloop"`` or ``"asyncio"``.

    :raises ConfigError: as :func:`new_event_loop`."""
    return "asyncio" if _factory(env) is asyncio.new_event_loop else "uvloop"


def fallback_warning(env: Mapping[str, str] | None = None) -> str | None:
    """A line to log when ``auto`` runs asyncio's loop on a system where uvloop is a
    required package (Linux, macOS: the install is incomplete), else ``None``.

    :raises ConfigError: as :func:`new_event_loop`."""
    if chosen_loop(env) == "uvloop" or loop_choice(env) != "auto":  # raises first
        return None
    if sys.platform == "win32" or sys.implementation.name != "cpython":
        return None  # no uvloop build here: asyncio's loop is expected
    return (
        "uvloop is not installed (a required package here): robots run on asyncio's own "
        'loop, with more CPU per answer; pip install "uvloop>=0.19", or set '
        "IMROBOTS_LOOP=asyncio to choose asyncio's loop and silence this"
    )


def new_event_loop(env: Mapping[str, str] | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop as ``IMROBOTS_LOOP`` chooses (read from ``env``, default
    ``os.environ``, at each call).

    :raises ConfigError: ``IMROBOTS_LOOP`` has an unknown value, or is ``uvloop`` and
        uvloop cannot be imported."""
    return _factory(env)()


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: what ``loop`` (default: the running loop) is."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], *, env: Mapping[str, str] | None = None) -> T:
    """:func:`asyncio.run` on the loop :func:`new_event_loop` makes.

    :raises ConfigError: as :func:`new_event_loop` (before ``main`` starts; it is closed)."""
    try:
        factory = _factory(env)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
