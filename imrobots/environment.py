"""The ``IMROBOTS_*`` environment variables that switch a behaviour on or off, read one way.

Each of them takes ``1``, ``true``, ``yes`` or ``on`` for on and ``0``, ``false``, ``no``
or ``off`` for off (case and surrounding spaces ignored); unset or empty means the
variable's default. Anything else is a :class:`~imrobots.errors.ConfigError` naming the
variable, not a guess: ``IMROBOTS_STRICT_PLUGINS=false`` must not turn strict loading
on, as a test for "set and not 0" would.

:data:`FLAGS` lists them with their defaults; :func:`environment_problems` is what
``imrobots check`` reports of the process environment (these flags and
``IMROBOTS_LOOP``, :mod:`imrobots.loop`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import ConfigError

__all__ = [
    "DISABLE_PLUGIN_AUTOLOAD",
    "FLAGS",
    "GC_TUNING",
    "STRICT_PLUGINS",
    "env_flag",
    "environment_problems",
]

STRICT_PLUGINS = "IMROBOTS_STRICT_PLUGINS"
"""On: a plugin that fails to load raises its error instead of being logged and left out
(default off)."""
DISABLE_PLUGIN_AUTOLOAD = "IMROBOTS_DISABLE_PLUGIN_AUTOLOAD"
"""On: no plugin is loaded from entry points, only the core's in-memory platform and
what the program registers itself (default off)."""
GC_TUNING = "IMROBOTS_GC_TUNING"
"""Off: the first runtime to start leaves the garbage collector as it is
(:func:`imrobots.runtime.tune_gc`; default on)."""

FLAGS: Mapping[str, bool] = {STRICT_PLUGINS: False, DISABLE_PLUGIN_AUTOLOAD: False, GC_TUNING: True}
"""Each flag and its default."""

_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


def env_flag(name: str, *, default: bool, env: Mapping[str, str] | None = None) -> bool:
    """Whether the flag ``name`` is on in ``env`` (default: :data:`os.environ`).

    :raises ConfigError: the value is none of the eight words above (the message
        quotes it; no flag holds a secret)."""
    raw = (os.environ if env is None else env).get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(
        f"{name}={raw!r} is not an on/off value: use 1, true, yes or on, or 0, false, no or off"
    )


def environment_problems(env: Mapping[str, str] | None = None) -> list[str]:
    """One line for each ``IMROBOTS_*`` variable of ``env`` that holds a value no command
    would take (the flags of :data:`FLAGS` and ``IMROBOTS_LOOP``); ``[]`` if none."""
    from .loop import loop_choice  # (loop imports this module's errors only)

    problems = []
    for name, default in FLAGS.items():
        try:
            env_flag(name, default=default, env=env)
        except ConfigError as exc:
            problems.append(str(exc))
    try:
        loop_choice(env)
    except ConfigError as exc:
        problems.append(str(exc))
    return problems
