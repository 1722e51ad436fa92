"""App mode's limits on the emulator: WeCom's per-member limits (30 messages a minute and
1,000 an hour to one member, answered 45009 beyond) are paced by the core's
``Scope.MEMBER`` rate limits, never refused; a markdown answer is split at 2,048 bytes."""

from __future__ import annotations

from imrobots import Message, Reply, Robot, Target
from imrobots.cards import Actions, Button, Card, Markdown
from imrobots.emulation import EmulatorAdapter
from imrobots.errors import RateLimited
from imrobots.platform import Platform, Scope
from imrobots.testing.conformance import open_rig
from imrobots_wecom.console import WeComConsoleAdapter
from imrobots_wecom.platform import WeComPlatform

SEND = "/cgi-bin/message/send"
LONG_ANSWER = "".join(
    f"第{i}段：企业微信的自建应用每条 markdown 消息最多两千零四十八个字节。\n" for i in range(120)
)
"""About 11,000 bytes of mostly CJK text (3 bytes a character)."""


def _platform(emulator: EmulatorAdapter) -> Platform:
    platform = emulator.create_platform()
    assert platform is not None
    return platform


class Echo(Robot):
    async def on_message(self, message: Message, reply: Reply) -> None:
        await reply.text(f"re: {message.text}")


class Long(Robot):
    async def on_message(self, message: Message, reply: Reply) -> None:
        await reply.text(LONG_ANSWER)


def _sends(adapter: WeComConsoleAdapter) -> list[dict[str, object]]:
    return [c for c in adapter.state()["calls"] if c["route"] == SEND]


def _most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t - start <= window) for i, start in enumerate(times))


def test_the_per_member_limits_are_declared_as_member_rate_limits() -> None:
    adapter = WeComConsoleAdapter(mode="app")
    platform = adapter.create_platform()
    assert isinstance(platform, WeComPlatform)
    member = [lim for lim in platform.capabilities.rate_limits if lim.scope is Scope.MEMBER]
    assert [(lim.rate, lim.window) for lim in member] == [(0.5, 60.0), (1000 / 3600, 3600.0)]


async def test_31_replies_to_one_member_within_a_minute_are_paced_not_refused() -> None:
    """WeCom's minute shortened to 1 s on both sides: 31 answers to one member in a
    burst go out paced over more than one window, and none is answered 45009."""
    adapter = WeComConsoleAdapter(mode="app", member_minute=1.0)
    async with open_rig(lambda: adapter, Echo(), make_platform=_platform, timeout=30) as rig:
        for i in range(31):
            await rig.say(f"q{i}", conversation_id="d-burst", group=False, user_id="bob")
        await rig.until(
            "31 answers",
            lambda: len(rig.robot_messages("d-burst")) == 31 or None,
            conversation_id="d-burst",
            timeout=20,
        )
        texts = sorted(str(m["text"]) for m in rig.robot_messages("d-burst"))
        assert texts == sorted(f"re: q{i}" for i in range(31))
        sends = _sends(adapter)
        assert len(sends) == 31
        assert [c for c in sends if c["rate_limited"] or c["status"] != 200] == []
        accepted = list(adapter.app.member_sends["bob"])
        assert len(accepted) == 31
        assert _most_in_any_window(accepted, 1.0) <= 30
        assert max(accepted) - min(accepted) > 1.0  # paced past the first window


class LongCards(Robot):
    """Answers with a card whose text is longer than a template card takes: WeCom gets a
    markdown message with the text, then the card (two messages to the member)."""

    async def on_message(self, message: Message, reply: Reply) -> None:
        text = Markdown(text="详细说明。" * 60)  # 900 bytes: more than a template card takes
        more = Actions(buttons=(Button(label="More", value="more"),))
        await reply.card(Card(title="Answer", elements=(text, more)))


async def test_cards_sent_as_two_messages_are_counted_twice_against_the_member() -> None:
    """Review finding: a long card is two messages of ``message/send`` on one limiter
    turn; 16 such answers to one member within WeCom's minute (shortened to 1 s) were
    32 messages against the member's 30 (45009, and WeCom drops the excess)."""
    adapter = WeComConsoleAdapter(mode="app", member_minute=1.0)
    async with open_rig(lambda: adapter, LongCards(), make_platform=_platform, timeout=30) as rig:
        for i in range(16):
            await rig.say(f"c{i}", conversation_id="d-cards", group=False, user_id="frank")
        await rig.until(
            "16 answers of two messages",
            lambda: len(adapter.app.member_sends.get("frank", ())) == 32 or None,
            conversation_id="d-cards",
            timeout=20,
        )
        sends = _sends(adapter)
        assert [c for c in sends if c["rate_limited"] or c["status"] != 200] == []
        accepted = list(adapter.app.member_sends["frank"])
        assert len(accepted) == 32 and _most_in_any_window(accepted, 1.0) <= 30


async def test_the_hourly_member_limit_is_paced_too() -> None:
    """WeCom's hour shortened to 1 s with 5 messages (and its minute to 0.5 s, so that
    the hour is the binding limit): 8 answers to one member go out paced, none refused."""
    adapter = WeComConsoleAdapter(mode="app", member_per_hour=5, member_hour=1.0, member_minute=0.5)
    async with open_rig(lambda: adapter, Echo(), make_platform=_platform, timeout=30) as rig:
        assert isinstance(rig.platform, WeComPlatform)
        assert rig.platform.settings.member_per_hour == 5
        for i in range(8):
            await rig.say(f"h{i}", conversation_id="d-hour", group=False, user_id="carol")
        await rig.until(
            "8 answers",
            lambda: len(rig.robot_messages("d-hour")) == 8 or None,
            conversation_id="d-hour",
            timeout=20,
        )
        assert [c for c in _sends(adapter) if c["rate_limited"]] == []
        accepted = [float(c["time"]) for c in _sends(adapter)]  # type: ignore[arg-type]
        assert len(accepted) == 8 and _most_in_any_window(accepted, 1.0) <= 5


async def test_the_emulator_refuses_a_member_over_the_limit_with_45009() -> None:
    """Without the core's pacing (the platform called directly), the 31st message to
    one member within the minute is refused 45009, which the platform reports as
    rate limited: what the paced tests above avoid."""
    adapter = WeComConsoleAdapter(mode="app")
    async with open_rig(lambda: adapter, Echo(), make_platform=_platform) as rig:
        target = Target.to_user("wecom", "dave")
        for i in range(30):
            await rig.platform.send_text(target, f"m{i}", markdown=True, key=f"k{i}")
        try:
            await rig.platform.send_text(target, "m30", markdown=True, key="k30")
        except RateLimited as refused:
            assert refused.code == "45009"
        else:
            raise AssertionError("the 31st message within the minute was not refused")


async def test_a_long_markdown_answer_is_split_at_2048_bytes_in_order() -> None:
    # The per-member minute shortened to 1 s: with WeCom's 60 s, the core spreads the
    # window's 27 sends over its tenths (3 per 6 s), and the parts would take 6 s.
    adapter = WeComConsoleAdapter(mode="app", member_minute=1.0)
    async with open_rig(lambda: adapter, Long(), make_platform=_platform, timeout=20) as rig:
        await rig.say("long", conversation_id="d-long", group=False, user_id="erin")

        def whole() -> list[str] | None:
            parts = [str(m["text"]) for m in rig.robot_messages("d-long")]
            return (
                parts if "".join(parts).replace("\n", "") == LONG_ANSWER.replace("\n", "") else None
            )

        parts = await rig.until("the whole answer", whole, conversation_id="d-long")
        assert len(parts) >= len(LONG_ANSWER.encode()) // 2048 + 1
        assert all(len(p.encode()) <= 2048 for p in parts)
        assert [c for c in _sends(adapter) if c["status"] != 200] == []
