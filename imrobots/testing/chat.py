"""The conversation DSL: say something, expect cards, press buttons, expect feedback."""

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
        self._mark = 0
        self._queue = emulator.subscribe()
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            event = await self._queue.get()
            view = event.get("card") or event.get("message")
            if view is not None and view.get("conversation_id") != self.conversation_id:
                continue
            self.events.append(event)
            self._changed.set()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.emulator.unsubscribe(self._queue)

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
        if not cards and not self._messages():
            return "nothing"
        parts = [
            f"card {cid}: "
            + " -> ".join(str(v["status"]) for v in views)
            + f" ({_card_text(views[-1])[:60]!r})"
            for cid, views in cards.items()
        ]
        parts += [f"message {m['text'][:60]!r}" for m in self._messages()]
        return "; ".join(parts)

    def _messages(self) -> list[View]:
        return [
            e["message"]
            for e in self.events[self._mark :]
            if e.get("type") == "message" and e["message"].get("from_robot")
        ]

    # ------------------------------------------------------------------ the DSL
    async def say(self, text: str, *, mention: bool = True, user_id: str | None = None) -> str:
        """Send ``text`` as a user; returns the platform's message id."""
        self._mark = len(self.events)
        return await self.emulator.say(
            text=text,
            conversation_id=self.conversation_id,
            group=self.group,
            user_id=user_id or self.user_id,
            user_name=self.user_name,
            mention=mention,
        )

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
        """The card shows streamed text (containing ``contains``) before it is final."""

        def find() -> View | None:
            for views in self.cards().values():
                for view in views:
                    if view["status"] == "streaming" and contains in _card_text(view):
                        return view
            return None

        result: View = await self._until(f"a streaming update containing {contains!r}", find)
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

    async def expect_no_answer(self) -> None:
        """Nothing was sent for the last message (for example, rejected by the policy)."""
        await self.runtime.wait_idle(timeout=self.timeout)
        if self.cards() or self._messages():
            raise ChatExpectationError(f"expected no answer; saw: {self.describe()}")

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
