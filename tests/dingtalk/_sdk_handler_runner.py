"""An app built the seed's way, with imrobots answering: the official ``dingtalk_stream``
client, unchanged, whose handler is :class:`imrobots_dingtalk.sdk.RobotHandler`.

Usage: ``python _sdk_handler_runner.py BASE_URL CLIENT_ID CLIENT_SECRET``

``DINGTALK_OPENAPI_ENDPOINT`` must be set before the SDK is imported (it is read at import
time), and ``get_host_ip`` is patched so the SDK never contacts 8.8.8.8. Feedback the robot
receives is printed as ``FEEDBACK <rating> <question>``.
"""

from __future__ import annotations

import os
import sys

BASE_URL, CLIENT_ID, CLIENT_SECRET = sys.argv[1:4]
os.environ["DINGTALK_OPENAPI_ENDPOINT"] = BASE_URL

import asyncio  # noqa: E402
import logging  # noqa: E402

import dingtalk_stream  # type: ignore[import-untyped]  # noqa: E402

from imrobots import Feedback  # noqa: E402
from imrobots.demo_agent import DemoAgent  # noqa: E402
from imrobots.examples import SupportRobot  # noqa: E402
from imrobots_dingtalk.sdk import RobotHandler  # noqa: E402

dingtalk_stream.DingTalkStreamClient.get_host_ip = lambda self: "127.0.0.1"


class Robot(SupportRobot):
    async def on_feedback(self, feedback: Feedback) -> None:
        print(f"FEEDBACK {feedback.rating.value} {feedback.question}", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    # the seed's code: a client with its credential and a ChatbotHandler on the bot topic
    credential = dingtalk_stream.Credential(CLIENT_ID, CLIENT_SECRET)
    client = dingtalk_stream.DingTalkStreamClient(credential)
    handler = RobotHandler(Robot(agent=DemoAgent(delay=0.02)), settings={"update_interval": 0.2})
    client.register_callback_handler(dingtalk_stream.ChatbotMessage.TOPIC, handler)
    # and, for the feedback buttons, the card callback topic
    client.register_callback_handler(dingtalk_stream.Card_Callback_Router_Topic, handler)
    handler.stop_on_signals()  # SIGTERM: running answers end interrupted, then the process
    asyncio.run(client.start())


if __name__ == "__main__":
    main()
