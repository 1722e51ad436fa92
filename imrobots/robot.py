"""The :class:`Robot` base class users subclass, and the :class:`Reply` it answers with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from .agents import Agent, AgentRequest, AnswerSource, as_agent
from .cards import Card
from .errors import ConfigError
from .models import CardAction, Feedback, Message
from .platform import CardRef
from .store import Turn
from .streaming import AnswerResult, StreamPolicy

if TYPE_CHECKING:
    from .runtime import RobotRuntime

__all__ = ["Reply", "Robot"]


class Reply:
    """How a robot answers one message. Every call goes through the app-wide rate limiter."""

    def __init__(self, runtime: RobotRuntime, message: Message) -> None:
        self.runtime = runtime
        self.message = message
        self.result: AnswerResult | None = None

    async def text(self, text: str) -> None:
        """Send plain text into the conversation."""
        await self.runtime.call(lambda: self.runtime.platform.send_text(self.message, text))

    async def markdown(self, text: str) -> None:
        """Send markdown into the conversation."""
        await self.runtime.call(
            lambda: self.runtime.platform.send_text(self.message, text, markdown=True)
        )

    async def card(self, card: Card) -> CardRef:
        """Send a card; keep the returned ref to :meth:`update` it."""
        return await self.runtime.call(lambda: self.runtime.platform.send_card(self.message, card))

    async def update(self, ref: CardRef, card: Card) -> None:
        """Replace a card sent with :meth:`card`."""
        await self.runtime.call(lambda: self.runtime.platform.update_card(ref, card))

    async def stream(
        self,
        source: AnswerSource,
        *,
        question: str | None = None,
        policy: StreamPolicy | None = None,
        feedback: bool = True,
    ) -> AnswerResult:
        """Stream an answer: a thinking card at once, throttled updates, then the final card.

        ``source`` is a string, an awaitable of one, or a (sync or async) iterable of
        text deltas or of the accumulated text. The final card carries the four
        feedback buttons unless ``feedback`` is false. Agent errors and timeouts
        end in an error card, cancellation in an interrupted card.
        """
        self.result = await self.runtime.stream_answer(
            self.message, source, question=question, policy=policy, feedback=feedback
        )
        return self.result


class Robot:
    """Base class of a robot. Subclass it and override what you need.

    The default :meth:`on_message` streams the configured agent's answer, which
    is the seed's whole robot::

        class SupportRobot(Robot):
            async def on_message(self, message, reply):
                await reply.stream(self.ask(message))
    """

    description: ClassVar[str] = ""

    def __init__(self, *, agent: object | None = None, **settings: Any) -> None:
        self.agent: Agent | None = as_agent(agent) if agent is not None else None
        self.settings = settings
        self._runtime: RobotRuntime | None = None

    @property
    def runtime(self) -> RobotRuntime:
        if self._runtime is None:
            raise RuntimeError(
                "this robot is not running: start it with imrobots run or a RobotRuntime"
            )
        return self._runtime

    def bind(self, runtime: RobotRuntime) -> None:
        """Called by the runtime that runs this robot."""
        self._runtime = runtime

    async def ask(self, message: Message) -> AsyncIterator[str]:
        """Ask the configured agent about ``message``, with the conversation's history.

        Yields the accumulated answer as it grows; a finished answer is added to
        the conversation history.
        """
        if self.agent is None:
            raise ConfigError(
                f"robot {type(self).__name__} has no agent: set [robots.NAME.agent] in the config"
            )
        runtime = self.runtime
        history = await runtime.store.history(message.conversation_key)
        request = AgentRequest.from_message(message, history)
        answer = ""
        async for text in self.agent.stream(request):
            answer = text
            yield text
        await runtime.store.append_history(
            message.conversation_key,
            [Turn(role="user", text=message.text), Turn(role="assistant", text=answer)],
            limit=runtime.options.history_limit,
        )

    async def on_message(self, message: Message, reply: Reply) -> None:
        """Answer a message. The default streams the agent's answer."""
        await reply.stream(self.ask(message))

    async def on_feedback(self, feedback: Feedback) -> None:
        """A user pressed a feedback button (verified and already stored)."""

    async def on_action(self, action: CardAction) -> None:
        """A user pressed a card button that is not a feedback button."""

    async def startup(self) -> None:
        """Called once before the robot receives messages."""

    async def shutdown(self) -> None:
        """Called once after the robot stopped receiving messages."""
