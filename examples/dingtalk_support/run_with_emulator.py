"""Run the example robot against the local DingTalk emulator, no account needed.

    python examples/dingtalk_support/run_with_emulator.py [--mode standard] [--port 8790]

It starts the emulator on 127.0.0.1, registers an app, starts the robot from
``emulator.toml`` (the plugin connects to the emulator's gateway exactly as it
would to DingTalk's), @-mentions the robot in a group with a few questions,
prints how each card goes from "thinking" to the final answer, presses a
feedback button and prints the stored feedback. With ``--serve`` it then keeps
running so that you can drive the emulator's control API yourself
(``POST /_emulator/messages``, see docs/platforms/dingtalk-emulator.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from imrobots.app import build_runtimes
from imrobots.config import load_config
from imrobots_dingtalk.emulator import CardRecord, DingTalkEmulator

HERE = Path(__file__).parent
CLIENT_ID = "dingsupport"
CLIENT_SECRET = "emulator-secret"
QUESTIONS = ("How do I get a refund?", "When will my parcel arrive?", "我要发票")


def describe(card: CardRecord) -> str:
    view = card.view
    status = view.get("status") or ("final" if view.get("buttons") else "updated")
    text = (view.get("markdown") or "").replace("\n", " ")
    return f"  [{card.updates[-1].route:32}] {status:9} {text[:70]!r}"


def answer_cards(emu: DingTalkEmulator, conversation_id: str) -> list[CardRecord]:
    return [c for c in emu.cards.values() if c.conversation_id == conversation_id]


def more_calls_than(emu: DingTalkEmulator, count: int) -> Callable[[], bool]:
    return lambda: len(emu.calls) > count


async def show_card_life(emu: DingTalkEmulator, conversation_id: str) -> None:
    """Print every change of the conversation's card until it shows the feedback buttons."""
    seen = 0
    while True:
        for card in answer_cards(emu, conversation_id):
            for _ in card.updates[seen:]:
                print(describe(card))
            seen = len(card.updates)
            if len(card.view.get("buttons") or []) == 4:
                return
        await emu.wait_for(more_calls_than(emu, len(emu.calls)), 30, what="the robot's next call")


async def main(mode: str, port: int, serve: bool) -> None:
    async with DingTalkEmulator(port=port, seed=1) as emu:
        emu.add_app(CLIENT_ID, CLIENT_SECRET)
        env = {
            **os.environ,
            "DINGTALK_CLIENT_ID": CLIENT_ID,
            "DINGTALK_CLIENT_SECRET": CLIENT_SECRET,
            "DINGTALK_EMULATOR_URL": emu.base_url,
            "DINGTALK_EMULATOR_HOST": emu.base_url.split("//", 1)[1],
            "DINGTALK_CARD_MODE": mode,
        }
        config = load_config(HERE / "emulator.toml", env=env)
        (runtime,) = build_runtimes(config)
        print(f"emulator at {emu.base_url}; robot on {runtime.platform.describe()}")
        await runtime.start()
        try:
            for number, question in enumerate(QUESTIONS, 1):
                started = time.monotonic()
                pushed = await emu.push_message(
                    CLIENT_ID, text=question, conversation_id=f"cid-example-{number}"
                )
                print(f"\n@robot {question}")
                await show_card_life(emu, pushed.conversation_id)
                print(f"  answered in {time.monotonic() - started:.2f}s (ack {pushed.ack.code})")
            card = next(c for c in emu.cards.values() if c.conversation_id == "cid-example-1")
            button = card.view["buttons"][0]
            await emu.press_button(
                CLIENT_ID,
                card_id=card.card_id,
                action_id=button["id"],
                params={"value": button["value"]},
            )
            await runtime.wait_idle(10)
            for feedback in await runtime.store.list_feedback():
                print(f"\nfeedback: {feedback.rating.label!r} on {feedback.question!r}")
            if serve:
                print(
                    f"\nserving; push messages with POST {emu.base_url}/_emulator/messages "
                    f"(header X-Imrobots-Token: {emu.control_token})"
                )
                await asyncio.Event().wait()
        finally:
            await runtime.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode",
        choices=("ai", "standard"),
        default="ai",
        help="ai (the default, what new apps can use) or standard (the seed's StandardCard)",
    )
    parser.add_argument("--port", type=int, default=0, help="emulator port (0: any free port)")
    parser.add_argument("--serve", action="store_true", help="keep running after the demo")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.mode, args.port, args.serve))
