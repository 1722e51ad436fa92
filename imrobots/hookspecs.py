"""The hook specifications of imrobots. Only hookspecs live here.

Plugins implement them with :data:`imrobots.hookimpl` in a module registered
under the ``imrobots`` entry-point group. Hooks are called with keyword
arguments; an implementation may accept any subset of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .models import Feedback, Message
    from .platform import PlatformSpec
    from .streaming import AnswerResult

hookspec = pluggy.HookspecMarker("imrobots")


@hookspec
def register_platforms(register: Callable[[PlatformSpec], None]) -> None:
    """Register IM platforms by calling ``register`` with a :class:`~imrobots.PlatformSpec`.

    Keep it cheap: give ``factory`` and ``settings`` as ``"module:attribute"``
    strings so the platform's SDK is imported only when a robot uses it, and
    list the SDK's modules in ``requires`` so a missing SDK is reported with
    the ``install`` command.

    Example::

        @imrobots.hookimpl
        def register_platforms(register):
            register(imrobots.PlatformSpec(
                name="telegram",
                factory="imrobots_telegram.platform:TelegramPlatform",
                settings="imrobots_telegram.platform:TelegramSettings",
                requires=("telegram",),
                install='pip install "imrobots-telegram"',
            ))
    """


@hookspec
def register_robots(register: Callable[..., None]) -> None:
    """Register robot classes by name: ``register(name, RobotClass)``.

    A config file then says ``robot = "NAME"`` instead of ``"module:Class"``. A value
    that is not a subclass of :class:`imrobots.Robot` is logged and left out, or raises
    :class:`~imrobots.errors.PluginError` with ``IMROBOTS_STRICT_PLUGINS=1``.

    Example::

        @imrobots.hookimpl
        def register_robots(register):
            register("support", SupportRobot)
    """


@hookspec
def register_emulators(register: Callable[..., None]) -> None:
    """Register a platform emulator: ``register(platform_name, factory)``.

    ``factory`` (or a ``"module:attribute"`` string) is called with keyword
    options (``port=...``) and returns an :class:`~imrobots.EmulatorAdapter`, used
    by ``imrobots emulate PLATFORM``, ``imrobots demo``, the web console and the
    pytest plugin.

    Example::

        @imrobots.hookimpl
        def register_emulators(register):
            register("dingtalk", "imrobots_dingtalk.console:DingTalkConsoleAdapter")
    """


@hookspec
def message_received(robot: str, message: Message) -> Any:
    """A message passed dedupe, the stale check and the access policy, and will be answered.

    May return an awaitable. Exceptions are logged and do not stop the answer.

    Example::

        @imrobots.hookimpl
        def message_received(robot, message):
            metrics.increment("messages", tags={"robot": robot, "platform": message.platform})
    """


@hookspec
def message_rejected(robot: str, message: Message, reason: str) -> Any:
    """A message was not answered: ``reason`` says why (policy, stale, busy, overloaded).

    No card was sent for it. May return an awaitable.

    Example::

        @imrobots.hookimpl
        def message_rejected(robot, message, reason):
            log.info("%s ignored %s: %s", robot, message.id, reason)
    """


@hookspec
def reply_finished(robot: str, message: Message, result: AnswerResult) -> Any:
    """An answer card reached its final state: ``result.status`` is ``final``, ``error``,
    ``interrupted`` or ``undelivered``. May return an awaitable.

    Example::

        @imrobots.hookimpl
        async def reply_finished(robot, message, result):
            await audit_log.write(robot, message.id, result.status, result.text)
    """


@hookspec
def feedback_received(robot: str, feedback: Feedback) -> Any:
    """A user pressed a feedback button; the value verified and the feedback is stored.

    May return an awaitable.

    Example::

        @imrobots.hookimpl
        def feedback_received(robot, feedback):
            if not feedback.helpful:
                alert_team(feedback.question, feedback.answer)
    """
