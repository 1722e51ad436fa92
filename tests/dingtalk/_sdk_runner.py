"""Run the official, unchanged ``dingtalk_stream`` SDK against a DingTalk emulator.

Usage: ``python _sdk_runner.py BASE_URL CLIENT_ID CLIENT_SECRET``

The robot answers a text message starting with ``card`` by sending a
StandardCard (``reply_card``) and then updating it (``update_card``); one
starting with ``ai`` streams an AI markdown card (``ai_markdown_card_start``,
``ai_streaming``, ``ai_finish``); any other text gets
``reply_text("echo: <text>")`` through the message's sessionWebhook. Card button
presses are answered with a ``cardData`` update in the ACK.

``DINGTALK_OPENAPI_ENDPOINT`` must be set before the SDK is imported (it is read
at import time), and ``get_host_ip`` is patched so the SDK never contacts 8.8.8.8.
"""

from __future__ import annotations

import os
import sys

BASE_URL, CLIENT_ID, CLIENT_SECRET = sys.argv[1:4]
os.environ["DINGTALK_OPENAPI_ENDPOINT"] = BASE_URL

import asyncio  # noqa: E402
from typing import Any  # noqa: E402

import dingtalk_stream  # type: ignore[import-untyped]  # noqa: E402
from dingtalk_stream import AckMessage, ChatbotMessage  # noqa: E402

dingtalk_stream.DingTalkStreamClient.get_host_ip = lambda self: "127.0.0.1"


def standard_card(title: str, text: str) -> dict[str, Any]:
    return {
        "config": {"autoLayout": True, "enableForward": True},
        "header": {"title": {"type": "text", "text": title}},
        "contents": [{"type": "markdown", "text": text, "id": "markdown_1"}],
    }


class Robot(dingtalk_stream.ChatbotHandler):  # type: ignore[misc]
    async def process(self, callback: Any) -> tuple[int, str]:
        incoming = ChatbotMessage.from_dict(callback.data)
        text = (incoming.text.content if incoming.text else "").strip()
        if text.startswith("ai"):
            card = self.ai_markdown_card_start(incoming, title="AI answer")
            card.ai_streaming("Hel", append=True)
            card.ai_streaming("lo", append=True)
            card.ai_finish()
        elif text.startswith("card"):
            biz_id = self.reply_card(standard_card("Thinking", "working on it"), incoming)
            self.update_card(biz_id, standard_card("Done", f"answer to {text}"))
        else:
            self.reply_text(f"echo: {text}", incoming)
        return AckMessage.STATUS_OK, "OK"


class Buttons(dingtalk_stream.CallbackHandler):  # type: ignore[misc]
    async def process(self, callback: Any) -> tuple[int, dict[str, Any]]:
        content = dingtalk_stream.CardCallbackMessage.from_dict(callback.data).content
        action = content["cardPrivateData"]["actionIds"][0]
        return AckMessage.STATUS_OK, {
            "cardData": {"cardParamMap": {"clicked": action}},
            "cardUpdateOptions": {"updateCardDataByKey": True},
        }


def main() -> None:
    credential = dingtalk_stream.Credential(CLIENT_ID, CLIENT_SECRET)
    client = dingtalk_stream.DingTalkStreamClient(credential)
    client.register_callback_handler(ChatbotMessage.TOPIC, Robot())
    client.register_callback_handler(dingtalk_stream.Card_Callback_Router_Topic, Buttons())
    asyncio.run(client.start())


if __name__ == "__main__":
    main()
