"""Soak: 3 replicas on Redis against one DingTalk emulator app, under faults.

Three robot processes (``python -m imrobots run``, the demo agent streaming into AI
cards) share one ``redis-server`` and one emulated app; the emulator spreads messages
across their connections. Users send a steady ``--rate`` of messages a second for
``--seconds``, over ``--conversations`` (60) group chats, each question unique (it is the
card's title, so every card is traced to its message). Meanwhile:

- every 10 s one live connection (a random replica's) is aborted (no close frame);
- at 35 % of the run one replica is killed with SIGKILL, and started again 2 s later;
- at 60 % Redis is restarted on the same port (without persistence: every key is
  lost); the store reconnects on its next operation.

Then the run settles (every card final or failed, or a deadline) and prints:

- **sent**; **answered** = final + interrupted, where *interrupted* counts answers the
  killed replica was streaming, closed as interrupted (the text so far and a note) by
  another replica once the killed one's lease lapsed: the user sees an ended answer and
  can ask again; the message is not lost and nothing hangs. They are listed apart;
- **duplicated**: messages with more than one card; **lost**: messages with no card (of
  them, those pushed to the killed replica and never acknowledged: DingTalk does not
  redeliver robot messages, PROTOCOLS 1.7);
- **rate-limit errors**: calls the emulator refused with 403 QpsLimitForAppkeyAndApi
  (20 calls per second per API for the app: all replicas together);
- **stuck cards**: cards still thinking or streaming;
- **p50/p99 answer latency**: from the push to the final card.

Goal: answered = sent, 0 duplicated, 0 lost, 0 rate-limit errors, 0 stuck.

**Metrics.** Each replica runs with ``--health-port 0`` (the URL read from its log). Its
``/metrics`` is scraped once everything settled, until two scrapes 0.3 s apart agree (a
counter moves a moment after the emulator saw the final card), just before it is stopped;
the killed replica is scraped just before its SIGKILL. The counters summed over every
process (the killed one's last scrape included) are printed beside the soak's own counts,
each with the range it must fall in:

- received = sent (plus redeliveries), answered = final cards, recovered = answers closed
  as interrupted, failed = error cards, rate_limited = the emulator's QPS refusals,
  reconnects = connections dropped, and the emulator's connections opened = replicas +
  restarts + drops;
- what the killed process did after its last scrape is lost with it (as it would be for a
  Prometheus): received and answered may fall short by what its connections took in, or
  its answers finished, from 1 s before that scrape (the margin for a frame or an answer
  in flight) to the kill; rate_limited by the refusals of that window; deduplicated may
  exceed the redeliveries by the adopted messages (a message whose replica died after
  answering it is dropped as a duplicate by its adopter);
- each process stopped with SIGTERM logs its counters; they must equal its last scrape.

Then "metrics match", or which do not.

**Secrets.** Redis requires a password (random per run). After the run the replicas' and
Redis's logs (and the soak's own lines) are scanned for the app's client secret, the
feedback secret, the Redis password and every access token, stream ticket and
sessionWebhook token the emulator issued; printed: how many were found (goal: 0).

    python bench/soak.py                   # 2 minutes
    python bench/soak.py --seconds 20      # what tests/scale/test_soak.py runs
    python bench/soak.py --keep /tmp/soak  # keep the logs (and redis.conf, robots.toml)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replicas import (
    APP,
    FEEDBACK_SECRET,
    SECRET,
    RedisProcess,
    Replica,
    SecretScan,
    Sent,
    Tally,
    emulator_secrets,
    find_secrets,
    scrape,
    tally,
    wait_connected,
    wait_settled,
    write_config,
)
from imrobots_dingtalk.emulator import DingTalkEmulator

COUNTERS = {
    "received": "imrobots_received_total",
    "answered": "imrobots_answered_total",
    "recovered": "imrobots_recovered_total",
    "adopted": "imrobots_adopted_total",
    "failed": "imrobots_failed_total",
    "deduplicated": "imrobots_deduplicated_total",
    "rate_limited": "imrobots_rate_limited_total",
    "reconnects": "imrobots_reconnects_total",
}
"""The counters compared, by short name."""

MARGIN = 1.0
"""Seconds before the killed replica's last scrape from which what it took in or finished
may be missing from that scrape (a frame or an answer in flight)."""


@dataclass
class Kill:
    """The replica killed mid-run: its last scrape, and when."""

    name: str
    scrape: dict[str, float]
    scraped_at: float
    killed_at: float
    connections: set[str] = field(default_factory=set)


@dataclass
class Check:
    """One counter summed over every process, against the soak's own count."""

    name: str
    metrics: int
    reference: int
    against: str
    low: int
    high: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.low <= self.metrics <= self.high

    def line(self) -> str:
        exact = self.low == self.high == self.reference
        allowed = "exact" if exact else f"{self.low}..{self.high}"
        note = f" ({self.note})" if self.note else ""
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"  {self.name:<19}{self.metrics:>8}{self.reference:>6}  {self.against:<36}"
            f"{verdict:<9}{allowed}{note}"
        )


@dataclass
class MetricsReport:
    processes: list[str] = field(default_factory=list)
    """The processes whose scrapes are summed."""
    totals: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)
    """Disagreements between a process's stop summary and its last scrape."""
    compared_summaries: int = 0

    @property
    def match(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks) and not self.summaries

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def lines(self) -> list[str]:
        lines = [
            f"/metrics summed over {len(self.processes)} processes: " + ", ".join(self.processes),
            f"  {'counter':<19}{'metrics':>8}{'soak':>6}  {'the soak counted':<36}"
            f"{'verdict':<9}allowed",
        ]
        lines += [c.line() for c in self.checks]
        lines.append(
            f"  stop summaries: {self.compared_summaries} logged at SIGTERM, "
            + (
                "each equal to its last scrape"
                if not self.summaries
                else "DIFFERENT: " + "; ".join(self.summaries)
            )
        )
        lines.append("metrics match" if self.match else "METRICS DO NOT MATCH")
        return lines


@dataclass
class SoakResult:
    tally: Tally
    events: list[str]
    metrics: MetricsReport
    secrets: SecretScan

    def lines(self) -> list[str]:
        return [*self.tally.lines(), *self.metrics.lines(), self.secrets.line()]


async def soak(
    *,
    seconds: float = 120.0,
    rate: float = 4.0,
    conversations: int = 60,
    replicas: int = 3,
    drop_every: float = 10.0,
    kill: bool = True,
    redis_restart: bool = True,
    seed: int = 7,
    directory: Path | None = None,
    verbose: bool = True,
    log_level: str = "debug",
) -> SoakResult:
    """Run the soak; return the tally, a log of what was done when, the metrics against
    the tally, and the scan of the logs for secrets."""
    rng = random.Random(seed)
    events: list[str] = []
    start = time.monotonic()

    def note(text: str) -> None:
        line = f"{time.monotonic() - start:6.1f}s  {text}"
        events.append(line)
        if verbose:
            print(line, flush=True)

    password = secrets.token_hex(16)
    with contextlib.ExitStack() as stack:
        work = directory or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis = RedisProcess(work, password=password)
        redis.start()
        stack.callback(redis.stop)
        async with (
            DingTalkEmulator(seed=seed, disconnect_grace=1.0) as emu,
            aiohttp.ClientSession() as http,
        ):
            emu.add_app(APP, SECRET)
            config = write_config(work / "robots.toml", emu, redis.url)
            procs = [
                Replica(f"replica-{i + 1}", config, work, health=True, log_level=log_level)
                for i in range(replicas)
            ]
            kills: list[Kill] = []
            last: dict[str, dict[str, float]] = {}
            summaries: dict[str, dict[str, int] | None] = {}
            try:
                for proc in procs:
                    await proc.start()
                await wait_connected(emu, replicas)
                note(f"{replicas} replicas connected; redis on port {redis.port}")
                sent = await _drive(
                    emu,
                    procs,
                    redis,
                    rng,
                    note,
                    kills,
                    http,
                    seconds=seconds,
                    rate=rate,
                    conversations=conversations,
                    drop_every=drop_every,
                    kill=kill,
                    redis_restart=redis_restart,
                )
                note(f"sent {len(sent)}; waiting for every answer to settle")
                ok = await wait_settled(emu, sent, timeout=60.0)
                note("settled" if ok else "NOT settled within 60 s")
                for proc in procs:
                    last[proc.name] = await _final_scrape(http, proc)
                note("scraped every replica's /metrics")
            finally:
                for proc in procs:
                    code = await proc.stop()
                    if code not in (0, None):
                        note(f"{proc.name} exited with {code}")
                    summaries[proc.name] = proc.stop_summary()
            killed = set().union(*(k.connections for k in kills))
            result = tally(emu, sent, killed_connections=killed)
            drops = sum("dropped connection" in e for e in events)
            report = compare(
                emu, result, sent, last, kills, summaries, drops=drops, replicas=replicas
            )
            texts = {
                f.name: f.read_text("utf-8", errors="replace") for f in sorted(work.glob("*.log"))
            }
            texts["soak output"] = "\n".join(events)
            scan = find_secrets(
                texts,
                {
                    "client secret": [SECRET],
                    "feedback secret": [FEEDBACK_SECRET],
                    "Redis password": [password],
                    **emulator_secrets(emu),
                },
            )
    return SoakResult(result, events, report, scan)


async def _final_scrape(
    http: aiohttp.ClientSession, proc: Replica, deadline: float = 15.0
) -> dict[str, float]:
    """Scrape until two scrapes 0.3 s apart agree on the compared counters (a counter
    moves a moment after the platform accepted the final card), or the deadline."""
    assert proc.metrics_url is not None
    end = time.monotonic() + deadline
    previous = await scrape(http, proc.metrics_url)
    while True:
        await asyncio.sleep(0.3)  # the interval of the stability check itself
        current = await scrape(http, proc.metrics_url)
        if all(previous.get(m) == current.get(m) for m in COUNTERS.values()):
            return current
        if time.monotonic() > end:
            return current
        previous = current


def compare(
    emu: DingTalkEmulator,
    result: Tally,
    sent: list[Sent],
    last: dict[str, dict[str, float]],
    kills: list[Kill],
    summaries: dict[str, dict[str, int] | None],
    *,
    drops: int,
    replicas: int,
) -> MetricsReport:
    """The counters summed over every process's last scrape, against the soak's counts."""
    report = MetricsReport()
    scrapes = [*last.values(), *(k.scrape for k in kills)]
    report.processes = [
        *last,
        *(
            f"{k.name} scraped {(k.killed_at - k.scraped_at) * 1000:.0f} ms before its SIGKILL"
            for k in kills
        ),
    ]
    for short, metric in COUNTERS.items():
        report.totals[short] = round(sum(s.get(metric, 0.0) for s in scrapes))
    t = report.totals

    # What the killed processes may have done after their last scrape (see MARGIN).
    pushes = [p for p in emu.pushes if getattr(p, "client_id", APP) == APP]
    by_id = {getattr(p, "msg_id", None): p for p in pushes}
    redeliveries = sum(max(0, p.ack.deliveries - 1) for p in pushes if hasattr(p, "ack"))
    late_in = late_done = late_refused = 0
    finished: dict[str, float] = {}
    for card in emu.cards.values():
        title = card.view.get("title")
        if isinstance(title, str) and card.view.get("status") == "finished":
            finished[title] = card.updated_at
    for k in kills:
        since = k.scraped_at - MARGIN
        for message in sent:
            push = by_id.get(message.msg_id)
            ack = getattr(push, "ack", None)
            if ack is None or ack.connection_id not in k.connections:
                continue
            if (ack.pushed_at or 0.0) >= since:
                late_in += 1
            done = finished.get(message.question)
            if done is not None and since <= done <= k.killed_at + MARGIN:
                late_done += 1
        late_refused += sum(
            1
            for c in emu.calls
            if "QpsLimit" in (c.error_code or "") and since <= c.at <= k.killed_at
        )
    opened = sum(1 for c in emu.connections if c.client_id == APP)
    restarts = len(kills)
    report.checks = [
        Check(
            "received",
            t["received"],
            result.sent,
            "sent",
            result.sent - late_in,
            result.sent + redeliveries,
            f"short by at most the {late_in} pushed to the killed replica from {MARGIN:g} s "
            f"before its last scrape; over by at most the {redeliveries} redeliveries"
            if kills or redeliveries
            else "",
        ),
        Check(
            "answered",
            t["answered"],
            result.final,
            "final cards",
            result.final - late_done,
            result.final,
            f"short by at most the {late_done} answers of the killed replica finished from "
            f"{MARGIN:g} s before its last scrape"
            if kills
            else "",
        ),
        Check(
            "recovered",
            t["recovered"],
            result.interrupted,
            "closed as interrupted",
            result.interrupted,
            result.interrupted,
        ),
        Check("failed", t["failed"], result.errored, "error cards", result.errored, result.errored),
        Check(
            "deduplicated",
            t["deduplicated"],
            redeliveries,
            "redeliveries",
            0,
            redeliveries + t["adopted"],
            f"over by at most the {t['adopted']} adopted messages" if t["adopted"] else "",
        ),
        Check(
            "rate_limited",
            t["rate_limited"],
            result.rate_limited,
            "emulator QPS refusals",
            result.rate_limited - late_refused,
            result.rate_limited,
            f"short by at most the {late_refused} refused near the kill" if late_refused else "",
        ),
        Check("reconnects", t["reconnects"], drops, "connections dropped", drops, drops),
        Check(
            "connections opened",
            opened,
            replicas + restarts + drops,
            "replicas+restarts+drops (emulator)",
            replicas + restarts + drops,
            replicas + restarts + drops,
        ),
    ]
    for name, summary in summaries.items():
        if summary is None or name not in last:
            continue
        report.compared_summaries += 1
        for short, value in summary.items():
            scraped = round(last[name].get(COUNTERS[short], 0.0))
            if scraped != value:
                report.summaries.append(f"{name} {short}: logged {value}, scraped {scraped}")
    return report


async def _drive(
    emu: DingTalkEmulator,
    procs: list[Replica],
    redis: RedisProcess,
    rng: random.Random,
    note: Callable[[str], None],
    kills: list[Kill],
    http: aiohttp.ClientSession,
    *,
    seconds: float,
    rate: float,
    conversations: int,
    drop_every: float,
    kill: bool,
    redis_restart: bool,
) -> list[Sent]:
    sent: list[Sent] = []
    loop = asyncio.get_running_loop()
    begin = loop.time()
    chats = [f"cidsoak{i:03d}" for i in range(conversations)]

    async def faults() -> None:
        kill_at = seconds * 0.35 if kill else None
        redis_at = seconds * 0.60 if redis_restart else None
        next_drop = drop_every
        while True:
            now = loop.time() - begin
            if now >= seconds:
                return
            if kill_at is not None and now >= kill_at:
                kill_at = None
                victim = rng.choice(procs)
                before = {c.connection_id for c in emu.live_connections(APP)}
                assert victim.metrics_url is not None
                scraped_at = time.monotonic()
                scraped = await scrape(http, victim.metrics_url)
                await victim.kill()
                record = Kill(victim.name, scraped, scraped_at, time.monotonic())
                kills.append(record)

                def closed(before: set[str] = before) -> bool:
                    return {c.connection_id for c in emu.live_connections(APP)} != before

                with contextlib.suppress(TimeoutError):
                    await emu.wait_for(closed, 5, what="the killed replica's connection closed")
                gone = before - {c.connection_id for c in emu.live_connections(APP)}
                record.connections = gone
                note(
                    f"SIGKILL {victim.name} (connections {sorted(gone)}), "
                    f"{(record.killed_at - scraped_at) * 1000:.0f} ms after its last scrape"
                )
                await asyncio.sleep(2.0)
                await victim.start()
                note(f"restarted {victim.name}")
                continue
            if redis_at is not None and now >= redis_at:
                redis_at = None
                await asyncio.to_thread(redis.restart)
                note("redis restarted (same port; its append-only file kept the keys)")
                continue
            if now >= next_drop:
                next_drop += drop_every
                live = emu.live_connections(APP)
                if live:
                    chosen = rng.choice(live)
                    if await emu.drop_connections(APP, connection_id=chosen.connection_id):
                        note(f"dropped connection {chosen.connection_id}")
                continue
            await asyncio.sleep(0.1)

    fault_task = asyncio.create_task(faults())
    try:
        n = 0
        while (due := begin + n / rate) < begin + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            conversation = chats[rng.randrange(len(chats))]
            question = f"soak question {n} in {conversation}"
            at = time.monotonic()
            pushed = await emu.push_message(
                APP,
                text=question,
                conversation_id=conversation,
                conversation_title=conversation,
                sender_staff_id=f"user{n % 7}",
                sender_nick=f"User {n % 7}",
            )
            sent.append(Sent(question, conversation, at, pushed.msg_id))
            n += 1
        await fault_task
    finally:
        fault_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fault_task
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="sending time (120)")
    parser.add_argument("--rate", type=float, default=4.0, help="messages a second (4)")
    parser.add_argument("--conversations", type=int, default=60, help="group chats (60)")
    parser.add_argument("--replicas", type=int, default=3, help="robot processes (3)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="keep logs in this directory")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    outcome = asyncio.run(
        soak(
            seconds=args.seconds,
            rate=args.rate,
            conversations=args.conversations,
            replicas=args.replicas,
            seed=args.seed,
            directory=args.keep,
        )
    )
    result = outcome.tally
    print()
    for line in outcome.lines():
        print(line)
    if result.stuck_questions:
        print("stuck:", ", ".join(result.stuck_questions[:10]))
    if result.slow:
        print("over 15 s:", ", ".join(result.slow[:10]))
    if result.lost_questions:
        print("lost:", ", ".join(result.lost_questions[:10]))
    goal = (
        result.answered == result.sent
        and result.duplicated == result.lost == result.rate_limited == result.stuck == 0
    )
    print("goal met" if goal else "GOAL NOT MET")


if __name__ == "__main__":
    main()
