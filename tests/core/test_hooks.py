"""Every hook: documented in docs/hooks.md, has a docstring with an example, and a test here."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import pytest

import imrobots
from imrobots import hookspecs
from imrobots.memory import MemoryPlatform
from imrobots.models import FeedbackRating
from imrobots.plugins import PluginManager
from imrobots.runtime import RobotRuntime
from imrobots.streaming import AnswerStatus

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"
HOOKS = sorted(
    name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, "imrobots_spec")
)


def test_there_are_hooks() -> None:
    assert {
        "register_platforms",
        "register_robots",
        "message_received",
        "feedback_received",
    } <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_has_docstring_with_example(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Example::" in doc, f"hookspec {hook} needs a docstring with an example"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    signature = inspect.signature(getattr(hookspecs, hook))
    heading = f"## {hook}({', '.join(signature.parameters)})"
    assert heading in DOCS.read_text(encoding="utf-8"), f"docs/hooks.md lacks '{heading}'"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    assert hasattr(sys.modules[__name__], f"test_hook_{hook}"), f"write test_hook_{hook}"


class Recorder:
    """A plugin recording every event hook call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @imrobots.hookimpl
    def message_received(self, robot: str, message: imrobots.Message) -> None:
        self.calls.append(("message_received", {"robot": robot, "message": message}))

    @imrobots.hookimpl
    def message_rejected(self, robot: str, message: imrobots.Message, reason: str) -> None:
        self.calls.append(("message_rejected", {"message": message, "reason": reason}))

    @imrobots.hookimpl
    async def reply_finished(
        self, robot: str, message: imrobots.Message, result: imrobots.AnswerResult
    ) -> None:
        self.calls.append(("reply_finished", {"message": message, "result": result}))

    @imrobots.hookimpl
    def feedback_received(self, robot: str, feedback: imrobots.Feedback) -> None:
        self.calls.append(("feedback_received", {"feedback": feedback}))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
async def hooked(manager: PluginManager) -> Any:
    recorder = Recorder()
    manager.register(recorder, name="recorder")
    platform = MemoryPlatform()
    runtime = RobotRuntime(
        name="support",
        robot=imrobots.Robot(agent=lambda request: f"echo: {request.text}"),
        platform=platform,
        hooks=manager.hook,
    )
    await runtime.start()
    yield recorder, platform, runtime
    await runtime.stop()


def test_hook_register_platforms(manager: PluginManager) -> None:
    class Plugin:
        @imrobots.hookimpl
        def register_platforms(self, register):  # type: ignore[no-untyped-def]
            register(imrobots.PlatformSpec(name="extra", factory="imrobots.memory:MemoryPlatform"))

    manager.register(Plugin(), name="extra-plugin")
    status = manager.platforms()["extra"]
    assert status.available and status.source == "extra-plugin"
    assert isinstance(manager.create_platform("extra", None), MemoryPlatform)


def test_hook_register_robots(manager: PluginManager) -> None:
    class MyRobot(imrobots.Robot):
        pass

    class Plugin:
        @imrobots.hookimpl
        def register_robots(self, register):  # type: ignore[no-untyped-def]
            register("mine", MyRobot)

    manager.register(Plugin(), name="robots-plugin")
    assert manager.robots()["mine"] is MyRobot
    assert "support" in manager.robots()


def test_hook_register_emulators(manager: PluginManager) -> None:
    class Plugin:
        @imrobots.hookimpl
        def register_emulators(self, register):  # type: ignore[no-untyped-def]
            register("fake", "imrobots.memory:MemoryPlatform")

    manager.register(Plugin(), name="emulator-plugin")
    assert manager.emulators()["fake"] == "imrobots.memory:MemoryPlatform"


async def test_hook_message_received(hooked: Any) -> None:
    recorder, platform, runtime = hooked
    message = await platform.say("hi")
    await runtime.wait_idle(timeout=5)
    [(_, call)] = [c for c in recorder.calls if c[0] == "message_received"]
    assert call["robot"] == "support" and call["message"].id == message.id


async def test_hook_message_rejected(hooked: Any) -> None:
    recorder, platform, runtime = hooked
    await platform.say("not for you", group=True, mentioned=False)
    await runtime.wait_idle(timeout=5)
    assert recorder.names() == ["message_rejected"]
    assert recorder.calls[0][1]["reason"] == "robot not mentioned"
    assert platform.cards == {}


async def test_hook_reply_finished(hooked: Any) -> None:
    recorder, platform, runtime = hooked
    await platform.say("ping")
    await runtime.wait_idle(timeout=5)
    [result] = [c[1]["result"] for c in recorder.calls if c[0] == "reply_finished"]
    assert result.status is AnswerStatus.FINAL and result.text == "echo: ping"


async def test_hook_feedback_received(hooked: Any) -> None:
    recorder, platform, runtime = hooked
    await platform.say("rate me")
    await runtime.wait_idle(timeout=5)
    [card] = platform.cards.values()
    await platform.press(card.id, FeedbackRating.NO_HELP)
    await runtime.wait_idle(timeout=5)
    [feedback] = [c[1]["feedback"] for c in recorder.calls if c[0] == "feedback_received"]
    assert feedback.rating is FeedbackRating.NO_HELP and feedback.answer == "echo: rate me"


async def test_a_failing_hook_is_logged_and_does_not_stop_the_answer(
    manager: PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        @imrobots.hookimpl
        def message_received(self, robot, message):  # type: ignore[no-untyped-def]
            raise RuntimeError("hook exploded")

    manager.register(Broken(), name="broken-hook")
    platform = MemoryPlatform()
    runtime = RobotRuntime(
        name="r",
        robot=imrobots.Robot(agent=lambda r: "fine"),
        platform=platform,
        hooks=manager.hook,
    )
    await runtime.start()
    try:
        await platform.say("hello")
        await runtime.wait_idle(timeout=5)
        [card] = platform.cards.values()
        assert card.text == "fine"
        assert "hook exploded" in caplog.text
    finally:
        await runtime.stop()


async def test_a_failing_hook_does_not_silence_other_plugins_hooks(
    manager: PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    """One plugin's event hook that raises, sync or async, is logged naming that plugin;
    the other plugins' implementations of the same hook still run. (pluggy stops at the
    first exception: a broken metrics plugin silenced an audit plugin's
    ``message_received``, and an async ``reply_finished`` after a failing one was never
    awaited.)"""
    ran: list[str] = []

    class Audit:
        @imrobots.hookimpl
        def message_received(self, robot: str, message: imrobots.Message) -> None:
            ran.append(f"audit saw {message.text}")

        @imrobots.hookimpl
        async def reply_finished(self, result: imrobots.AnswerResult) -> None:
            ran.append(f"audit finished {result.text}")

    class Broken:
        @imrobots.hookimpl
        def message_received(self, robot: str) -> None:
            raise RuntimeError("metrics down")

        @imrobots.hookimpl
        async def reply_finished(self, robot: str) -> None:
            raise RuntimeError("audit db down")

    manager.register(Audit(), name="audit")
    manager.register(Broken(), name="broken")  # registered last: pluggy calls it first
    platform = MemoryPlatform()
    runtime = RobotRuntime(
        name="r",
        robot=imrobots.Robot(agent=lambda r: "fine"),
        platform=platform,
        hooks=manager.hook,
    )
    await runtime.start()
    try:
        await platform.say("hello")
        await runtime.wait_idle(timeout=5)
    finally:
        await runtime.stop()
    assert ran == ["audit saw hello", "audit finished fine"]
    assert "the message_received hook of plugin 'broken' failed" in caplog.text
    assert "the reply_finished hook of plugin 'broken' failed" in caplog.text
