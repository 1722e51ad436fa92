"""A small custom robot: answers a few commands itself and sends the rest to an agent."""

from __future__ import annotations

from imrobots import Feedback, Message, Reply, Robot


class HelpdeskRobot(Robot):
    """``/status`` answers at once in plain text; anything else streams the agent's answer."""

    description = "Helpdesk robot with a /status command"

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.unhappy: list[Feedback] = []

    async def on_message(self, message: Message, reply: Reply) -> None:
        if message.text.strip() == "/status":
            await reply.markdown("All systems **operational**.")
            return
        await reply.stream(self.ask(message))

    async def on_feedback(self, feedback: Feedback) -> None:
        if not feedback.helpful:
            self.unhappy.append(feedback)


async def faq_agent(request: object) -> str:
    """A stand-in agent; use "openai" or your own in the config."""
    return "Our support team answers within **one business day**."
