"""Wall time of many concurrent answers on DingTalk: the plugin beside the seed's pattern.

    python bench/dingtalk_answers.py [--answers 200] [--seed-answers 5] [--chunks 40]
                                     [--chunk-delay 0.05] [--app-rate 20]

Every answer is the same simulated model: ``--chunks`` chunks, ``--chunk-delay``
seconds apart (2 s per answer by default). Each user @-mentions the robot in
their own group, all at once, on the DingTalk emulator (20 QPS per app and API,
as DingTalk's standard edition).

- ``plugin standard`` / ``plugin ai``: ``imrobots`` with this plugin in both card
  modes: acks at once, one limiter bucket per DingTalk API (``app_rate`` x 0.9 each; every
  AI-card operation counts on the ``card.streaming`` bucket), throttled card
  updates, every final card guaranteed.
- ``seed pattern``: the tutorial's handler on the official ``dingtalk-stream``
  SDK, in a subprocess: the agent runs synchronously inside the async handler
  and updates the StandardCard with blocking calls (every 2 s or 5 chunks, 20
  updates at most), and the message is acknowledged after the answer. Answers
  therefore run one after another; only ``--seed-answers`` are measured and the
  wall time for ``--answers`` is extrapolated linearly (marked "extrapolated").

Columns: wall time from the first message to the last final card; the time
each user waited for their first card (the thinking card or, for an answer that
was complete before its first turn at the limiter, the final card) and for the
final card (p50/p99); API calls made and refused with 403; acks later than
DingTalk's 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

APP = "dinganswersapp"
SECRET = "answers-secret"
WORDS = (
    "Refunds", "are", "possible", "within", "thirty", "days", "of", "delivery,", "with", "the",
    "prepaid", "label.",
)  # fmt: skip


def chunk(i: int) -> str:
    return WORDS[i % len(WORDS)] + " "


# --------------------------------------------------------------------------- seed (child)


def run_seed_client(url: str, chunks: int, delay: float) -> None:
    """The seed's handler, as the tutorial wrote it (blocking agent and card calls)."""
    os.environ["DINGTALK_OPENAPI_ENDPOINT"] = url
    import logging

    import dingtalk_stream  # type: ignore[import-untyped]
    from dingtalk_stream import AckMessage, ChatbotMessage

    # The SDK resets its loggers to INFO whenever it builds a client or handler (see
    # dingtalk_intake.py): this process logs nothing below WARNING.
    logging.disable(logging.INFO)
    client_class: Any = dingtalk_stream.DingTalkStreamClient
    client_class.get_host_ip = lambda self: "127.0.0.1"

    def seed_card(title: str, text: str, buttons: bool = False) -> dict[str, Any]:
        stamp = str(int(time.time() * 1000))
        contents: list[dict[str, Any]] = [{"type": "markdown", "text": text, "id": "md_" + stamp}]
        if buttons:
            contents.append({"type": "divider", "id": "divider_" + stamp})
            contents.append(
                {
                    "type": "action",
                    "id": "action_" + stamp,
                    "actions": [
                        {
                            "type": "button",
                            "label": {"type": "text", "text": label, "id": "btn_" + stamp},
                            "actionType": "request",
                            "status": "normal",
                            "id": "btn_" + stamp,
                            "value": label,
                        }
                        for label in ("Very helpful", "Helpful", "Not much help", "No help")
                    ],
                }
            )
        return {
            "config": {"autoLayout": True, "enableForward": True},
            "header": {"title": {"type": "text", "text": title}},
            "contents": contents,
        }

    def agent(
        question: str, chat_id: str, stream_callback: Callable[[dict[str, Any]], None]
    ) -> None:
        for i in range(chunks):
            time.sleep(delay)  # the model thinking, synchronously
            stream_callback({"data": {"content": chunk(i)}})

    class SeedHandler(dingtalk_stream.ChatbotHandler):  # type: ignore[misc]
        async def process(self, callback: Any) -> tuple[int, str]:
            incoming = ChatbotMessage.from_dict(callback.data)
            question = incoming.text.content.strip()
            biz_id = self.reply_card(
                seed_card(question, "[thinking] analysing your question, please wait..."),
                incoming,
                at_sender=True,
            )
            state: dict[str, Any] = {"text": "", "updates": 0, "last": time.time(), "pending": 0}

            def on_chunk(piece: dict[str, Any]) -> None:
                state["text"] += piece["data"]["content"]
                state["pending"] += 1
                due = time.time() - state["last"] >= 2 or state["pending"] >= 5
                if state["updates"] < 19 and due:
                    self.update_card(biz_id, seed_card(question, state["text"]))
                    state.update(updates=state["updates"] + 1, last=time.time(), pending=0)

            agent(question, incoming.sender_staff_id, on_chunk)
            self.update_card(biz_id, seed_card(question, state["text"], buttons=True))
            return AckMessage.STATUS_OK, "OK"

    client = client_class(dingtalk_stream.Credential(APP, SECRET))
    client.register_callback_handler(ChatbotMessage.TOPIC, SeedHandler())
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(client.start())


# --------------------------------------------------------------------------- measuring


class Result:
    def __init__(
        self,
        name: str,
        answers: int,
        wall: float,
        thinking: list[float],
        finals: list[float],
        calls: int,
        refused: int,
        late_acks: int,
        extrapolated_from: int | None = None,
    ) -> None:
        self.name = name
        self.answers = answers
        self.wall = wall
        self.thinking = sorted(thinking)
        self.finals = sorted(finals)
        self.calls = calls
        self.refused = refused
        self.late_acks = late_acks
        self.extrapolated_from = extrapolated_from


def pct(values: Sequence[float], q: float) -> str:
    if not values:
        return "-"
    return f"{values[min(len(values) - 1, int(q * len(values)))]:.2f}"


def is_final(card: Any) -> bool:
    return len(card.view.get("buttons") or []) == 4


async def push_all(emu: Any, count: int) -> list[Any]:
    return [
        await emu.push_message(
            APP,
            text=f"question {i}: how do I get a refund?",
            conversation_id=f"cid-answers-{i}",
            sender_staff_id=f"user{i}",
        )
        for i in range(count)
    ]


def collect(
    emu: Any, name: str, pushes: list[Any], started: float, extrapolated: int | None
) -> Result:
    by_conversation: dict[str, list[Any]] = {}
    for card in emu.cards.values():
        by_conversation.setdefault(card.conversation_id, []).append(card)
    thinking, finals = [], []
    for push in pushes:
        cards = by_conversation.get(push.conversation_id, [])
        if not cards:
            continue
        thinking.append(min(c.at for c in cards) - push.at)
        done = [u.at for c in cards for u in c.updates if c.view.get("buttons")]
        finals.append(max(done) - push.at if done else float("nan"))
    last = max(u.at for c in emu.cards.values() for u in c.updates)
    api_calls = [c for c in emu.calls if c.route not in ("oauth2.accessToken",)]
    return Result(
        name,
        len(pushes),
        last - started,
        thinking,
        finals,
        len(api_calls),
        sum(1 for c in api_calls if c.status == 403),
        sum(1 for a in emu.acks.values() if a.kind == "message" and (a.latency or 0) > 3.0),
        extrapolated,
    )


async def run_plugin(mode: str, args: argparse.Namespace) -> Result:
    from imrobots import RobotRuntime, RuntimeOptions, Secret
    from imrobots.examples import SupportRobot
    from imrobots_dingtalk.emulator import DingTalkEmulator
    from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

    async def model(request: Any) -> AsyncIterator[str]:
        for i in range(args.chunks):
            await asyncio.sleep(args.chunk_delay)
            yield chunk(i)

    async with DingTalkEmulator(seed=1, ping_interval=None) as emu:
        emu.add_app(APP, SECRET)
        platform = DingTalkPlatform(
            DingTalkSettings(
                client_id=APP,
                client_secret=Secret(SECRET),
                openapi_endpoint=emu.base_url,
                card_mode="ai" if mode == "ai" else "standard",
                ai_template_id="bench.schema",
                app_rate=args.app_rate,
            )
        )
        runtime = RobotRuntime(
            name="support",
            robot=SupportRobot(agent=model),
            platform=platform,
            options=RuntimeOptions(max_concurrent=max(100, args.answers)),
        )
        await runtime.start()
        try:
            started = time.monotonic()
            pushes = await push_all(emu, args.answers)
            await emu.wait_for(
                lambda: sum(is_final(c) for c in emu.cards.values()) >= args.answers,
                args.timeout,
                what="every final card",
            )
            return collect(emu, f"plugin {mode}", pushes, started, None)
        finally:
            await runtime.stop()


async def run_seed(args: argparse.Namespace) -> Result:
    from imrobots_dingtalk.emulator import DingTalkEmulator

    async with DingTalkEmulator(seed=1, ping_interval=None) as emu:
        emu.add_app(APP, SECRET)
        command = [
            sys.executable,
            __file__,
            "--child",
            "--url",
            emu.base_url,
            "--chunks",
            str(args.chunks),
            "--chunk-delay",
            str(args.chunk_delay),
        ]
        proc = await asyncio.create_subprocess_exec(*command)
        try:
            await emu.wait_for(lambda: bool(emu.live_connections(APP)), 30, what="SDK up")
            started = time.monotonic()
            pushes = await push_all(emu, args.seed_answers)
            await emu.wait_for(
                lambda: sum(is_final(c) for c in emu.cards.values()) >= args.seed_answers,
                args.timeout,
                what="every seed final card",
            )
            return collect(emu, "seed pattern", pushes, started, args.seed_answers)
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        print("  ".join(cells))
        if index == 0:
            print("  ".join("-" * w for w in widths))


async def main(args: argparse.Namespace) -> None:
    per_answer = args.chunks * args.chunk_delay
    print(
        f"{args.answers} concurrent answers of {args.chunks} chunks every {args.chunk_delay:g}s "
        f"(~{per_answer:g}s each); app_rate {args.app_rate:g} req/s per API (client budget "
        f"{args.app_rate * 0.9:g} per API); emulator 20 QPS per app and API"
    )
    results = []
    for name in args.setups.split(","):
        if name == "seed":
            results.append(await run_seed(args))
        else:
            results.append(await run_plugin(name, args))
    rows = [
        [
            "setup",
            "answers",
            "wall s",
            "first card p50/p99 s",
            "final p50/p99 s",
            "API calls",
            "403s",
            "acks >3 s",
        ]
    ]
    for r in results:
        rows.append(
            [
                r.name,
                str(r.answers),
                f"{r.wall:.1f}",
                f"{pct(r.thinking, 0.5)} / {pct(r.thinking, 0.99)}",
                f"{pct(r.finals, 0.5)} / {pct(r.finals, 0.99)}",
                str(r.calls),
                str(r.refused),
                str(r.late_acks),
            ]
        )
        if r.extrapolated_from is not None:
            scale = args.answers / r.extrapolated_from
            # answers run one after another: the n-th user waits n answers for the thinking card
            rows.append(
                [
                    "  extrapolated",
                    str(args.answers),
                    f"{r.wall * scale:.1f}",
                    f"{r.wall * scale / 2:.1f} / {r.wall * scale * 0.99:.1f}",
                    f"{r.wall * scale / 2:.1f} / {r.wall * scale * 0.99:.1f}",
                    f"{r.calls * scale:.0f}",
                    "-",
                    f"~{args.answers - 1}",
                ]
            )
    print()
    print_table(rows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=200, help="concurrent answers (plugin)")
    parser.add_argument(
        "--seed-answers", type=int, default=5, help="answers measured for the seed pattern"
    )
    parser.add_argument("--chunks", type=int, default=40, help="chunks per answer")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--app-rate", type=float, default=20.0, help="the plugin's app_rate")
    parser.add_argument("--setups", default="standard,ai,seed", help="standard,ai,seed")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait, per setup")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_seed_client(args.url, args.chunks, args.chunk_delay)
    else:
        asyncio.run(main(args))
