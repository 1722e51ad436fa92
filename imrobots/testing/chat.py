"""The conversation DSL: say something, expect cards, press buttons, expect feedback.

A :class:`Chat` watches two things: the emulator's views of what the platform shows
(cards, messages), and the robot's runtime (which messages it took in or rejected), so
that :meth:`Chat.expect_no_answer` waits until the robot really processed a message
instead of passing before the message even arrived."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..demo import make_emulator, platform_for
from ..emulation import EmulatorAdapter
from ..models import Feedback, FeedbackRating
from ..plugins import PluginManager, get_plugin_manager
from ..robot import Robot
from ..runtime import RobotRuntime, RuntimeOptions
from ..store import MemoryStore, Store

__all__ = ["Chat", "ChatExpectationError", "robot_chat"]

View = dict[str, Any]
_conversations = itertools.count(1)


class ChatExpectationError(AssertionError):
    """An expectation of the DSL was not met in time; the message says what was seen."""


class _HookTap:
    """Stands in for a runtime's ``hooks``: tells the chat about every hook the runtime
    fires (which messages it took in, which it rejected and why), then calls the real ones."""

    def __init__(self, inner: Any, observe: Callable[[str, dict[str, Any]], None]) -> None:
        self.inner = inner
        self._observe = observe

    def __getattr__(self, name: str) -> Callable[..., Any]:
        inner = getattr(self.inner, name, None) if self.inner is not None else None

        def call(**kwargs: Any) -> Any:
            self._observe(name, kwargs)
            return inner(**kwargs) if inner is not None else []

        return call


def _card_text(card: View) -> str:
    return "\n\n".join(b.get("text", "") for b in card.get("blocks", []) if b["type"] == "markdown")


class Chat:
    """One conversation with a robot on an emulator.

    Every ``expect_*`` waits (up to ``timeout`` seconds) for what it expects,
    looking only at what happened after the last :meth:`say`.
    """

    def __init__(
        self,
        emulator: EmulatorAdapter,
        runtime: RobotRuntime,
        *,
        conversation_id: str | None = None,
        group: bool = True,
        user_id: str = "tester",
        user_name: str = "Tester",
        timeout: float = 10.0,
    ) -> None:
        self.emulator = emulator
        self.runtime = runtime
        self.conversation_id = conversation_id or f"test-conversation-{next(_conversations)}"
        self.group = group
        self.user_id = user_id
        self.user_name = user_name
        self.timeout = timeout
        self.events: list[View] = []
        """Every event of this conversation's cards and messages, in order."""
        self.outcomes: dict[str, str] = {}
        """What the robot made of each message said in this chat, by message id:
        ``"received"`` (it passed the policy and dedupe) or ``"rejected: REASON"``."""
        self._mark = 0
        self._last_said: str | None = None
        self._queue = emulator.subscribe()
        self._changed = asyncio.Event()
        self._tap = _HookTap(runtime.hooks, self._observe)
        runtime.hooks = self._tap
        self._reader = asyncio.create_task(self._read())

    def _observe(self, hook: str, kwargs: dict[str, Any]) -> None:
        message = kwargs.get("message")
        if message is None or not hasattr(message, "id"):
            return
        if hook == "message_received":
            self.outcomes.setdefault(message.id, "received")
        elif hook == "message_rejected":
            self.outcomes.setdefault(message.id, f"rejected: {kwargs.get('reason', '')}")
        else:
            return
        self._changed.set()

    def _take(self, event: View) -> None:
        view = event.get("card") or event.get("message") or event.get("upload")
        if view is not None and view.get("conversation_id") != self.conversation_id:
            return
        self.events.append(event)
        self._changed.set()

    async def _read(self) -> None:
        while True:
            self._take(await self._queue.get())

    def _drain(self) -> None:
        """Take the events the emulator already emitted and the reader has not seen yet."""
        while not self._queue.empty():
            self._take(self._queue.get_nowait())

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.emulator.unsubscribe(self._queue)
        if self.runtime.hooks is self._tap:
            self.runtime.hooks = self._tap.inner

    # ------------------------------------------------------------------ waiting
    async def _until(self, what: str, find: Callable[[], Any]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                while (found := find()) is None:
                    self._changed.clear()
                    await self._changed.wait()
                return found
        except TimeoutError:
            raise ChatExpectationError(
                f"expected {what} within {self.timeout}s; saw: {self.describe()}"
            ) from None

    def _card_events(self) -> list[View]:
        return [e["card"] for e in self.events[self._mark :] if e.get("type") == "card"]

    def cards(self) -> dict[str, list[View]]:
        """Each card since the last :meth:`say`, with every state it was seen in."""
        seen: dict[str, list[View]] = {}
        for card in self._card_events():
            seen.setdefault(card["id"], []).append(card)
        return seen

    def describe(self) -> str:
        cards = self.cards()
        if not cards and not self._messages() and not self.uploads():
            return "nothing"
        parts = [
            f"card {cid}: "
            + " -> ".join(str(v["status"]) for v in views)
            + f" ({_card_text(views[-1])[:60]!r})"
            for cid, views in cards.items()
        ]
        parts += [f"message {m['text'][:60]!r}" for m in self._messages()]
        parts += [f"{u['kind']} {u['name']!r} ({u['size']} bytes)" for u in self.uploads()]
        return "; ".join(parts)

    def uploads(self) -> list[View]:
        """The images and files the robot sent since the last :meth:`say`, as upload
        views (``{"conversation_id", "kind", "name", "size"}``, size in bytes)."""
        return [e["upload"] for e in self.events[self._mark :] if e.get("type") == "upload"]

    def _messages(self) -> list[View]:
        return [
            e["message"]
            for e in self.events[self._mark :]
            if e.get("type") == "message" and e["message"].get("from_robot")
        ]

    # ------------------------------------------------------------------ the DSL
    async def say(self, text: str, *, mention: bool = True, user_id: str | None = None) -> str:
        """Send ``text`` as a user; returns the platform's message id.

        In a group (the default), ``mention`` says whether the user @-mentions the robot;
        in a direct chat (``robot_chat(..., group=False)``) the robot is always addressed."""
        self._drain()
        self._mark = len(self.events)
        message_id = await self.emulator.say(
            text=text,
            conversation_id=self.conversation_id,
            group=self.group,
            user_id=user_id or self.user_id,
            user_name=self.user_name,
            mention=mention,
        )
        self._last_said = message_id
        return message_id

    async def expect_thinking(self) -> View:
        """A new card whose first state is "thinking"."""

        def find() -> View | None:
            for views in self.cards().values():
                if views[0]["status"] == "thinking":
                    return views[0]
            return None

        result: View = await self._until("a thinking card", find)
        return result

    async def expect_update(self, contains: str = "") -> View:
        """The card shows answer text containing ``contains``: a streamed update, or the
        final card itself when the answer came in one piece (an agent that returns a
        string, or one that streams faster than the platform's update interval).

        Use :meth:`expect_streamed` to require updates before the final card."""

        def find() -> View | None:
            for views in self.cards().values():
                for view in views:
                    if view["status"] in ("streaming", "final") and contains in _card_text(view):
                        return view
            return None

        result: View = await self._until(f"answer text containing {contains!r}", find)
        return result

    async def expect_streamed(self, contains: str = "", *, updates: int = 1) -> View:
        """The answer streamed: at least ``updates`` distinct streamed states of the card
        before it was final, the last of them containing ``contains``. Returns the last
        streamed state. Fails for an answer that arrived in one piece."""

        def find() -> View | None:
            for views in self.cards().values():
                streamed: list[View] = []
                for view in views:
                    text = _card_text(view)
                    if (
                        view["status"] == "streaming"
                        and text
                        and (not streamed or _card_text(streamed[-1]) != text)
                    ):
                        streamed.append(view)
                if len(streamed) >= updates and contains in _card_text(streamed[-1]):
                    return streamed[-1]
            return None

        result: View = await self._until(
            f"{updates} streamed update{'s' if updates != 1 else ''} containing {contains!r}",
            find,
        )
        return result

    async def _expect_status(self, status: str, contains: str) -> View:
        def find() -> View | None:
            for views in self.cards().values():
                last = views[-1]
                if last["status"] == status and contains in _card_text(last):
                    return last
            return None

        result: View = await self._until(f"a {status} card containing {contains!r}", find)
        return result

    async def expect_final(self, contains: str = "") -> View:
        """The answer card is final and its text contains ``contains``."""
        return await self._expect_status("final", contains)

    async def expect_error(self) -> View:
        """The answer ended in an error card."""
        return await self._expect_status("error", "")

    async def expect_interrupted(self) -> View:
        """The answer ended in an interrupted card."""
        return await self._expect_status("interrupted", "")

    async def expect_text(self, contains: str = "") -> View:
        """The robot sent a plain text or markdown message containing ``contains``."""

        def find() -> View | None:
            return next((m for m in self._messages() if contains in m["text"]), None)

        result: View = await self._until(f"a message containing {contains!r}", find)
        return result

    async def expect_no_answer(self) -> str:
        """The robot processed the last message and sent nothing for it (for example, the
        access policy rejected it: a group message without the @-mention).

        Waits until the message reached the robot (taken in or rejected), then until the
        robot is idle, so that an answer on its way counts. Returns what the robot made of
        the message: ``"received"`` or ``"rejected: REASON"``, or ``"not delivered"`` for
        a message the platform never pushes to the robot (WeCom's intelligent robot gets
        a group message only when it is @-mentioned)."""
        said = self._last_said
        if said is None:
            raise ChatExpectationError("expect_no_answer() needs a say() first")
        if said in self.emulator.undelivered:
            self.outcomes.setdefault(said, "not delivered")
        try:
            await self._until_outcome(said)
            await self.runtime.wait_idle(timeout=self.timeout)
        except TimeoutError:
            raise ChatExpectationError(
                f"expected the robot to process message {said} within {self.timeout}s; "
                f"it did not (saw: {self.describe()})"
            ) from None
        self._drain()
        if self.cards() or self._messages() or self.uploads():
            raise ChatExpectationError(
                f"expected no answer ({self.outcomes[said]}); saw: {self.describe()}"
            )
        return self.outcomes[said]

    async def _until_outcome(self, message_id: str) -> None:
        async with asyncio.timeout(self.timeout):
            while message_id not in self.outcomes:
                self._changed.clear()
                await self._changed.wait()

    async def press(self, label: str | FeedbackRating, *, user_id: str | None = None) -> None:
        """Press the button labelled ``label`` on the latest card that has it."""
        wanted = label.label if isinstance(label, FeedbackRating) else label
        for views in reversed(list(self.cards().values())):
            for block in views[-1]["blocks"]:
                for button in block.get("buttons", ()):
                    if button["label"] == wanted:
                        await self.emulator.press(
                            card_id=views[-1]["id"],
                            button_id=button["id"],
                            user_id=user_id or self.user_id,
                        )
                        return
        raise ChatExpectationError(f"no button {wanted!r}; saw: {self.describe()}")

    async def expect_feedback(self, rating: str | FeedbackRating) -> Feedback:
        """Feedback with ``rating`` was verified and stored."""
        wanted = FeedbackRating(rating)
        store = self.runtime.store
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    for feedback in await store.list_feedback(robot=self.runtime.name):
                        if feedback.rating is wanted and feedback.sender.id == self.user_id:
                            return feedback
                    await self.runtime.wait_idle()
                    await asyncio.sleep(0.01)
        except TimeoutError:
            stored = [f.rating.value for f in await store.list_feedback(robot=self.runtime.name)]
            raise ChatExpectationError(
                f"expected feedback {wanted.value!r} within {self.timeout}s; stored: {stored}"
            ) from None


@contextlib.asynccontextmanager
async def robot_chat(
    robot: Robot,
    *,
    platform: str = "memory",
    name: str = "robot",
    group: bool = True,
    options: RuntimeOptions | None = None,
    store: Store | None = None,
    manager: PluginManager | None = None,
    emulator_options: dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[Chat]:
    """Run ``robot`` on ``platform``'s emulator and yield a :class:`Chat` with it."""
    manager = manager or get_plugin_manager()
    emulator = make_emulator(platform, manager, **(emulator_options or {}))
    await emulator.start()
    runtime: RobotRuntime | None = None
    chat: Chat | None = None
    try:
        runtime = RobotRuntime(
            name=name,
            robot=robot,
            platform=platform_for(platform, emulator, manager),
            store=store or MemoryStore(),
            options=options or RuntimeOptions(stale_after=None),
            hooks=manager.hook,
        )
        await runtime.start()
        chat = Chat(emulator, runtime, group=group, timeout=timeout)
        yield chat
    finally:
        if chat is not None:
            await chat.close()
        if runtime is not None:
            await runtime.stop(timeout=5)
        await emulator.stop()
