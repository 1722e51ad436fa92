"""The example robot: the seed's customer-service robot, in full."""

from __future__ import annotations

from .models import Message
from .robot import Reply, Robot

__all__ = ["SupportRobot"]


class SupportRobot(Robot):
    """Streams the configured agent's answer into a card with four feedback buttons."""

    description = "Customer-service robot: streams the agent's answer into a card"

    async def on_message(self, message: Message, reply: Reply) -> None:
        await reply.stream(self.ask(message))
