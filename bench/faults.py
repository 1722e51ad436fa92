"""Faults: answers while a share of the platform's calls fail, and a short auth refusal.

**Failing calls** (every platform whose emulator is installed: DingTalk in AI-card mode,
WeCom's intelligent robot on its long connection, Feishu in CardKit mode). One robot (the
``support`` robot, the demo agent) on the platform's emulator, through the emulator
contract (``EmulatorAdapter.fault``). ``--answers`` (50) users each ask one question in a
chat of their own, ``--rate`` (10) a second. Meanwhile ``--share`` (10 %) of the robot's API
calls fail, the kind of failure changing every half second among those the emulator has:

- ``rate_limit``: refused with the platform's rate-limit error;
- ``errors``: the platform's retryable server error (5xx, "system busy");
- ``lost_answers``: the call takes effect, then its answer never comes (the client times
  out or its connection drops): an unknown outcome.

Printed per platform: answers final, stuck (cards still thinking or streaming), chats
with no card at all, duplicates (chats with more than one answer card), the failure kinds used, and
the calls the emulator failed. Goal: all final, 0 stuck, 0 without a card, 0 duplicates.

**Auth refusal** (DingTalk): the robot answers ``--answers`` questions sent at ``--rate``;
half a second in, every access token expires and the token endpoint refuses the app's
credentials (400 ``invalidClientIdOrSecret``) for ``--refusal`` (8) seconds, then accepts
them again. Printed: final cards, stuck, messages with no card, token calls refused.
Goal: all final.

    python bench/faults.py                     # every installed platform, then the refusal
    python bench/faults.py --platforms dingtalk --skip-refusal
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imrobots import RobotRuntime, RuntimeOptions
from imrobots.demo_agent import DemoAgent
from imrobots.emulation import EmulatorAdapter
from imrobots.examples import SupportRobot
from imrobots.testing.conformance import default_platform

KINDS = ("rate_limit", "errors", "lost_answers")
ENDED = {"final", "error", "interrupted"}


def _adapter(platform: str) -> EmulatorAdapter | None:
    """The platform's emulator adapter, or ``None`` if its plugin is not installed."""
    try:
        if platform == "dingtalk":
            from imrobots_dingtalk.console import DingTalkConsoleAdapter

            return DingTalkConsoleAdapter()
        if platform == "wecom":
            from imrobots_wecom.console import WeComConsoleAdapter

            return WeComConsoleAdapter(mode="robot")
        if platform == "feishu":
            from imrobots_feishu.console import FeishuConsoleAdapter

            return FeishuConsoleAdapter(card_mode="cardkit")
    except ImportError:
        return None
    raise ValueError(f"unknown platform {platform!r}")


@dataclass
class Figures:
    platform: str
    answers: int = 0
    final: int = 0
    stuck: int = 0
    no_card: int = 0
    duplicates: int = 0
    kinds: list[str] = field(default_factory=list)
    failed_calls: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)
    """The chats with a stuck card or more than one, and their cards."""

    def line(self) -> str:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed_calls.items())) or "none"
        return (
            f"{self.platform:9} final {self.final}/{self.answers}  stuck {self.stuck}  "
            f"no card {self.no_card}  duplicates {self.duplicates}  "
            f"({self.seconds:.1f} s; faults used: {', '.join(self.kinds)}; "
            f"{self.calls} calls, failed: {failed})"
        )


def _answer_cards(adapter: EmulatorAdapter) -> dict[str, list[dict[str, Any]]]:
    """Answer cards by conversation (cards with a status: answer cards)."""
    by_chat: dict[str, list[dict[str, Any]]] = {}
    for card in adapter.state()["cards"]:
        if card.get("status") is not None:
            by_chat.setdefault(str(card["conversation_id"]), []).append(card)
    return by_chat


def _settled(adapter: EmulatorAdapter, chats: list[str]) -> bool:
    cards = _answer_cards(adapter)
    return all(cards.get(chat) and all(c["status"] in ENDED for c in cards[chat]) for chat in chats)


async def _rotate(adapter: EmulatorAdapter, kinds: list[str], share: float) -> None:
    """Every half second, the next failure kind at ``share``; the others off."""
    i = 0
    while True:
        current = kinds[i % len(kinds)]
        for kind in kinds:  # off first: some emulators keep one share for two kinds
            if kind != current:
                await adapter.fault(kind, 0.0)
        await adapter.fault(current, share)
        i += 1
        await asyncio.sleep(0.5)


async def failing_calls(
    platform: str, *, answers: int = 50, rate: float = 10.0, share: float = 0.1
) -> Figures | None:
    adapter = _adapter(platform)
    if adapter is None:
        return None
    figures = Figures(platform=platform, answers=answers)
    await adapter.start()
    runtime = RobotRuntime(
        name="support",
        robot=SupportRobot(agent=DemoAgent(delay=0.02)),
        platform=default_platform(adapter),
        options=RuntimeOptions(),
        feedback_secret="faults-bench-secret",
    )
    kinds: list[str] = []
    for kind in KINDS:
        try:
            await adapter.fault(kind, 0.0)
            kinds.append(kind)
        except (NotImplementedError, ValueError):
            pass
    figures.kinds = kinds
    chats = [f"faultchat{i}" for i in range(answers)]
    started = time.monotonic()
    try:
        await runtime.start()
        rotation = asyncio.create_task(_rotate(adapter, kinds, share))
        try:
            for i, chat in enumerate(chats):
                await adapter.say(
                    text="How do I get a refund?",
                    conversation_id=chat,
                    group=False,
                    user_id=f"user{i}",
                    user_name=f"User {i}",
                    mention=True,
                )
                await asyncio.sleep(1 / rate)
            with contextlib.suppress(TimeoutError):
                await adapter.wait_for(lambda: _settled(adapter, chats), timeout=90)
        finally:
            rotation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rotation
            for kind in kinds:
                await adapter.fault(kind, 0.0)
        figures.seconds = time.monotonic() - started
        with contextlib.suppress(TimeoutError):
            await runtime.wait_idle(30)
    finally:
        await runtime.stop(timeout=10)
        await adapter.stop()
    cards = _answer_cards(adapter)
    for chat in chats:
        found = cards.get(chat, [])
        if not found:
            figures.no_card += 1
            continue
        if len(found) > 1 or any(c["status"] not in ENDED for c in found):
            figures.details.append(
                f"{chat}: "
                + ", ".join(f"{c['status']} ({c.get('updates')} updates)" for c in found)
            )
        if len(found) > 1:
            figures.duplicates += 1
        if any(c["status"] == "final" for c in found):
            figures.final += 1
        figures.stuck += sum(1 for c in found if c["status"] not in ENDED)
    calls = adapter.state()["calls"]
    figures.calls = len(calls)
    for call in calls:
        if call.get("rate_limited"):
            figures.failed_calls["rate limited"] += 1
        elif isinstance(call.get("status"), int) and call["status"] >= 500:
            figures.failed_calls["5xx"] += 1
        elif call.get("error"):
            figures.failed_calls[str(call["error"])] += 1
    return figures


@dataclass
class Refusal:
    answers: int = 0
    final: int = 0
    stuck: int = 0
    no_card: int = 0
    refused_token_calls: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"auth refusal: final {self.final}/{self.answers}  stuck {self.stuck}  "
            f"no card {self.no_card}  token calls refused {self.refused_token_calls}  "
            f"({self.seconds:.1f} s)"
        )


async def auth_refusal(*, answers: int = 50, rate: float = 10.0, refusal: float = 8.0) -> Refusal:
    """DingTalk: tokens expire and the token endpoint refuses the credentials for a while."""
    from imrobots_dingtalk.console import DingTalkConsoleAdapter

    adapter = DingTalkConsoleAdapter()
    emu = adapter.emulator
    await adapter.start()
    runtime = RobotRuntime(
        name="support",
        robot=SupportRobot(agent=DemoAgent(delay=0.02)),
        platform=default_platform(adapter),
        feedback_secret="faults-bench-secret",
    )
    result = Refusal(answers=answers)
    chats = [f"refusalchat{i}" for i in range(answers)]
    app = emu.apps[adapter.client_id]
    secret = app.client_secret
    started = time.monotonic()

    async def refuse() -> None:
        await asyncio.sleep(0.5)
        emu.expire_tokens()
        app.client_secret = "not-the-app-secret"  # 400 invalidClientIdOrSecret meanwhile
        try:
            await asyncio.sleep(refusal)
        finally:
            app.client_secret = secret

    try:
        await runtime.start()
        refusing = asyncio.create_task(refuse())
        for i, chat in enumerate(chats):
            await adapter.say(
                text="How do I get a refund?",
                conversation_id=chat,
                group=False,
                user_id=f"user{i}",
                user_name=f"User {i}",
                mention=True,
            )
            await asyncio.sleep(1 / rate)
        await refusing
        with contextlib.suppress(TimeoutError):
            await adapter.wait_for(lambda: _settled(adapter, chats), timeout=90)
        result.seconds = time.monotonic() - started
    finally:
        await runtime.stop(timeout=10)
        await adapter.stop()
    cards = _answer_cards(adapter)
    for chat in chats:
        found = cards.get(chat, [])
        if not found:
            result.no_card += 1
        elif any(c["status"] == "final" for c in found):
            result.final += 1
        result.stuck += sum(1 for c in found if c["status"] not in ENDED)
    result.refused_token_calls = sum(
        1 for c in emu.calls if c.route == "oauth2.accessToken" and c.status == 400
    )
    return result


async def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> None:
    for platform in args.platforms.split(","):
        figures = await failing_calls(
            platform, answers=args.answers, rate=args.rate, share=args.share
        )
        out(figures.line() if figures else f"{platform:9} skipped: its plugin is not installed")
        for detail in figures.details if figures else []:
            out(f"          {detail}")
    if not args.skip_refusal:
        out((await auth_refusal(answers=args.answers, rate=args.rate, refusal=args.refusal)).line())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platforms", default="dingtalk,wecom,feishu")
    parser.add_argument("--answers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=10.0, help="questions a second (10)")
    parser.add_argument("--share", type=float, default=0.1, help="share of calls failing (0.1)")
    parser.add_argument("--refusal", type=float, default=8.0, help="seconds of refusal (8)")
    parser.add_argument("--skip-refusal", action="store_true")
    parser.add_argument("--log-level", default="CRITICAL")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper())
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
