"""Several robot processes on one DingTalk emulator app, sharing one redis-server.

The harness of ``bench/soak.py`` and of the replica tests (``tests/scale/``): a
``redis-server`` on 127.0.0.1 (restartable on the same port), the DingTalk emulator in
this process, and N replicas, each a real ``python -m imrobots run`` subprocess on one
config (``[store] backend = "redis"``), killable with SIGKILL and restartable. After a
run, :func:`tally` reads the emulator's record: which message got which card(s), how
each card ended, the rate-limited calls.

With ``health=True`` each replica serves ``/healthz`` and ``/metrics`` on a free port
(``--health-port 0``; the URL is read from its log), and :func:`scrape` reads its counters.
:func:`find_secrets` scans captured logs for secrets and tokens.

Everything binds 127.0.0.1, port 0 (redis-server: a free port picked here).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from imrobots_dingtalk.emulator import CardRecord, DingTalkEmulator

ROOT = Path(__file__).resolve().parent.parent
APP = "dingreplicaapp"
SECRET = "replica-secret-value-0123456789"
FEEDBACK_SECRET = "replica-feedback-secret"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A ``redis-server`` on 127.0.0.1; :meth:`restart` stops it (SIGTERM) and starts it
    again on the same port. With ``persist`` (what deployments of replicas need) it keeps
    its data in an append-only file, fsynced on every write, so a restart loses nothing;
    without, a restart loses every key. With ``password`` it requires ``AUTH`` (set in a
    config file it reads, ``redis.conf`` in ``directory``, so that it is not on a command
    line); :attr:`url` carries the password."""

    def __init__(
        self, directory: Path, *, persist: bool = True, password: str | None = None
    ) -> None:
        self.directory = directory
        self.persist = persist
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, deadline: float = 10.0) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = [executable]
        if self.password:
            conf = self.directory / "redis.conf"
            conf.write_text(f"requirepass {self.password}\n", encoding="utf-8")
            conf.chmod(0o600)
            args.append(str(conf))
        args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--dir", str(self.directory)]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        with (self.directory / "redis.log").open("ab") as output:
            self.process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
        end = time.monotonic() + deadline
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"redis-server did not start: {self.directory / 'redis.log'}")
            time.sleep(0.01)  # polling the new process's port

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                if self.password:
                    secret = self.password.encode()
                    sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
                    if not sock.recv(64).startswith(b"+OK"):
                        return False
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def write_config(
    path: Path,
    emu: DingTalkEmulator,
    redis_url: str,
    *,
    prefix: str = "imrobots-replicas:",
    delay: float = 0.03,
    liveness_ttl: float = 3.0,
    extra_settings: str = "",
    extra_options: str = "",
) -> Path:
    """The config every replica runs: the emulator's app, the Redis store, the demo agent
    streaming a chunk every ``delay`` seconds."""
    host = emu.base_url.split("//", 1)[1]
    path.write_text(
        f"""
[store]
backend = "redis"
url = "{redis_url}"
prefix = "{prefix}"

[robots.support]
platform = "dingtalk"
feedback_secret = "{FEEDBACK_SECRET}"

[robots.support.settings]
client_id = "{APP}"
client_secret = "{SECRET}"
openapi_endpoint = "{emu.base_url}"
oapi_endpoint = "{emu.base_url}"
webhook_hosts = ["{host}"]
download_hosts = ["{host}"]
reconnect_initial = 0.05
{extra_settings}

[robots.support.agent]
use = "demo"
delay = {delay}

[robots.support.options]
liveness_ttl = {liveness_ttl}
{extra_options}
""",
        encoding="utf-8",
    )
    return path


class Replica:
    """One robot process: ``python -m imrobots run --config CONFIG``, its output in a file.

    With ``health``, it runs with ``--health-port 0``: :meth:`start` waits for the URL the
    process logs (``health: ..., metrics: URL``) and sets :attr:`metrics_url`."""

    def __init__(
        self,
        name: str,
        config: Path,
        directory: Path,
        *,
        health: bool = False,
        log_level: str = "info",
    ) -> None:
        self.name = name
        self.config = config
        self.log = directory / f"{name}.log"
        self.health = health
        self.log_level = log_level
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.metrics_url: str | None = None
        """``http://127.0.0.1:PORT/metrics`` of the current process (``health`` only)."""
        self._offset = 0
        """Where the current process's output starts in :attr:`log`."""

    async def start(self, deadline: float = 60.0) -> None:
        self.starts += 1
        self.metrics_url = None
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        with self.log.open("ab") as output:
            output.write(f"--- start {self.starts} ---\n".encode())
            output.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "imrobots",
                "--log-level",
                self.log_level,
                "run",
                "--config",
                str(self.config),
                "--no-status",
                *(["--health-port", "0"] if self.health else []),
                stdout=output,
                stderr=output,
                env=env,
            )
        if self.health:
            self.metrics_url = await self._logged_metrics_url(deadline)

    async def _logged_metrics_url(self, deadline: float) -> str:
        end = time.monotonic() + deadline
        while True:
            found = _METRICS_URL.search(self.output())
            if found:
                return found.group(1)
            if not self.alive or time.monotonic() > end:
                raise RuntimeError(f"{self.name} logged no metrics URL:\n{self.tail()}")
            await asyncio.sleep(0.05)  # polling the process's log for its first lines

    def output(self) -> str:
        """What the current (or last) process wrote."""
        try:
            with self.log.open("rb") as file:
                file.seek(self._offset)
                return file.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def stop_summary(self) -> dict[str, int] | None:
        """The counters the current process logged when it stopped (``robot NAME on
        PLATFORM stopped: ...``), by metric name (``received``, ``answered``, ...), or
        ``None`` (killed, or still running)."""
        found = _STOP_SUMMARY.search(self.output())
        if found is None:
            return None
        counts = {
            name.replace("-", "_").replace(" ", "_"): int(n)
            for n, name in _SUMMARY_COUNT.findall(found.group(1))
        }
        return {
            "received": counts.get("received", 0),
            "answered": counts.get("answered", 0),
            "failed": counts.get("failed", 0),
            "deduplicated": counts.get("deduplicated", 0),
            "rate_limited": counts.get("rate_limited_responses", 0),
            "reconnects": counts.get("reconnects", 0),
        }

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        """SIGKILL: nothing in the process runs to close its answers."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


_METRICS_URL = re.compile(r"metrics: (http://\S+/metrics)")
_STOP_SUMMARY = re.compile(r"robot \S+ on \S+ stopped: (.*)")
_SUMMARY_COUNT = re.compile(r"(\d+) ([a-z][a-z -]*?)(?=[,;()]|$)")


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """One ``GET`` of a ``/metrics`` URL: each sample's value summed over its labels, by
    sample name (``imrobots_answered_total``, ...). Raises ``aiohttp.ClientError``."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        response.raise_for_status()
        text = await response.text()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def emulator_secrets(emu: DingTalkEmulator) -> dict[str, set[str]]:
    """The credentials the emulator handed out, by kind: every access token it issued (the
    ones still valid, and every one its token route answered), stream tickets and the
    sessionWebhook tokens of pushed messages."""
    tokens = {t.token for t in emu.state.tokens.values()}
    for call in emu.calls:
        response = call.response
        if isinstance(response, dict) and isinstance(response.get("accessToken"), str):
            tokens.add(response["accessToken"])
    return {
        "access token": tokens,
        "stream ticket": set(emu.state.tickets),
        "sessionWebhook token": {s.token for s in emu.state.sessions.values()},
    }


@dataclass
class SecretScan:
    files: list[str] = field(default_factory=list)
    size: int = 0
    """Characters scanned."""
    kinds: dict[str, int] = field(default_factory=dict)
    """How many distinct values of each kind were looked for."""
    found: list[str] = field(default_factory=list)
    """``FILE: KIND`` for each secret found (its value never printed)."""

    def line(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.kinds.items())
        verdict = "none found" if not self.found else "FOUND: " + "; ".join(self.found)
        return (
            f"secrets in logs      {len(self.found)}  ({len(self.files)} files, "
            f"{self.size:,} characters, looked for {kinds}): {verdict}"
        )


def find_secrets(
    texts: dict[str, str], secrets: dict[str, Iterable[str]], *, shortest: int = 8
) -> SecretScan:
    """Look for each secret (as is, and URL-encoded) in each text (name: content). Values
    shorter than ``shortest`` characters are refused (they would match by chance)."""
    import urllib.parse

    scan = SecretScan(files=sorted(texts), size=sum(len(t) for t in texts.values()))
    for kind, values in secrets.items():
        values = {v for v in values if v}
        short = [v for v in values if len(v) < shortest]
        if short:
            raise ValueError(f"a {kind} shorter than {shortest} characters cannot be scanned for")
        scan.kinds[kind] = len(values)
        for name, text in texts.items():
            if any(v in text or urllib.parse.quote(v, safe="") in text for v in values):
                scan.found.append(f"{name}: {kind}")
    return scan


async def wait_connected(emu: DingTalkEmulator, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` connections of the app are live."""
    await emu.wait_for(
        lambda: len(emu.live_connections(APP)) >= count, timeout, what=f"{count} connections"
    )


@dataclass
class Sent:
    """A message a user sent: its question (the card's title), conversation, and when."""

    question: str
    conversation: str
    at: float
    msg_id: str


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    """Messages with exactly one card that ended final, or interrupted (see ``interrupted``)."""
    final: int = 0
    interrupted: int = 0
    """Cards closed as interrupted by a replica other than the one that opened it (the opener
    was killed): the user sees the text so far and "answer interrupted"; nothing hangs."""
    wrongly_interrupted: int = 0
    """Cards closed as interrupted although the replica that took the message in was not
    killed (counted neither answered nor lost)."""
    errored: int = 0
    """Messages whose card ended failed for another reason than an interruption (an error
    card: the handler raised, or the answer could not be delivered)."""
    duplicated: int = 0
    """Messages with more than one card."""
    lost: int = 0
    """Messages with no card at all."""
    lost_in_kill: int = 0
    """Of ``lost``: pushed to a connection of a replica killed before it acknowledged them
    (DingTalk never redelivers robot messages: the platform's own loss)."""
    stuck: int = 0
    """Cards still thinking or streaming."""
    rate_limited: int = 0
    """Calls the emulator refused for a QPS limit (403 QpsLimitForAppkeyAndApi)."""
    other_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    """Seconds from the push to the final card, per final answer."""
    stuck_questions: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    """Final answers that took over 15 s."""
    lost_questions: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]

    def lines(self) -> list[str]:
        return [
            f"sent                 {self.sent}",
            f"answered             {self.answered}  (final {self.final}, "
            f"interrupted by another replica {self.interrupted})",
            f"interrupted wrongly  {self.wrongly_interrupted}",
            f"error cards          {self.errored}",
            f"duplicated           {self.duplicated}",
            f"lost                 {self.lost}  (of which never acked by a killed replica: "
            f"{self.lost_in_kill})",
            f"rate-limit errors    {self.rate_limited}",
            f"other API errors     {self.other_errors}",
            f"stuck cards          {self.stuck}",
            f"answer latency p50   {self.percentile(50):.2f} s",
            f"answer latency p99   {self.percentile(99):.2f} s",
        ]


def card_status(card: CardRecord) -> str | None:
    status = card.view.get("status")
    return status if isinstance(status, str) else None


def tally(emu: DingTalkEmulator, sent: Iterable[Sent], *, killed_connections: set[str]) -> Tally:
    """Read the emulator's record of a run against what was sent."""
    sent = list(sent)
    by_title: dict[str, list[CardRecord]] = {}
    for card in emu.cards.values():
        title = card.view.get("title")
        if isinstance(title, str):
            by_title.setdefault(title, []).append(card)
    pushes = {getattr(p, "msg_id", None): p for p in emu.pushes}
    result = Tally(sent=len(sent))
    for message in sent:
        cards = by_title.get(message.question, [])
        if not cards:
            result.lost += 1
            push = pushes.get(message.msg_id)
            ack = getattr(push, "ack", None)
            result.lost_questions.append(
                f"{message.question} ({message.msg_id}, acked "
                f"{ack is not None and ack.acked}, on {getattr(ack, 'connection_id', None)})"
            )
            if ack is not None and not ack.acked and ack.connection_id in killed_connections:
                result.lost_in_kill += 1
            continue
        if len(cards) > 1:
            result.duplicated += 1
        statuses = [card_status(c) for c in cards]
        card = cards[0]
        if "finished" in statuses:
            result.final += 1
            result.answered += 1
            done = next(c for c in cards if card_status(c) == "finished")
            result.latencies.append(done.updated_at - message.at)
            if done.updated_at - message.at > 15:
                result.slow.append(f"{message.question} ({message.msg_id})")
        elif "failed" in statuses and card.content.get("stopReason") == "interrupted":
            push = pushes.get(message.msg_id)
            ack = getattr(push, "ack", None)
            if ack is not None and ack.connection_id in killed_connections:
                result.interrupted += 1
                result.answered += 1
            else:  # a live replica's answer closed as interrupted: a fault, not an answer
                result.wrongly_interrupted += 1
        elif "failed" in statuses:
            result.errored += 1
        for c in cards:
            if card_status(c) not in ("finished", "failed"):
                result.stuck += 1
                result.stuck_questions.append(message.question)
    for call in emu.calls:
        if call.status >= 400:
            if "QpsLimit" in (call.error_code or ""):
                result.rate_limited += 1
            else:
                result.other_errors += 1
    return result


def settled(emu: DingTalkEmulator, sent: Iterable[Sent]) -> bool:
    """Every message has a card and every card ended (finished or failed)."""
    titles: dict[str, list[str | None]] = {}
    for card in emu.cards.values():
        title = card.view.get("title")
        if isinstance(title, str):
            titles.setdefault(title, []).append(card_status(card))
    return all(
        (statuses := titles.get(m.question)) and all(s in ("finished", "failed") for s in statuses)
        for m in sent
    )


async def wait_settled(emu: DingTalkEmulator, sent: list[Sent], timeout: float) -> bool:
    try:
        await emu.wait_for(lambda: settled(emu, sent), timeout, what="every answer settled")
    except (TimeoutError, AssertionError, RuntimeError):
        return False
    return True


def describe(value: Any) -> str:
    return str(value)
