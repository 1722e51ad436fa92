"""Issue 12: health and metrics (Build 3), observability (item 10), secrets in logs (item 12).

A real ``imrobots --log-format json run --health-port 0`` process answers through the
DingTalk emulator while faults are injected (rate-limited answers, a dropped connection, a
reconnect whose ticket request hangs, a redelivery, a forged feedback press). The test
scrapes ``/healthz`` and ``/metrics`` as a monitoring system would and checks each counter
moved by what the emulator saw; every line the process wrote is JSON, the stop summary
names the faults, and no configured secret or issued token appears anywhere in its output.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from imrobots import RuntimeOptions
from imrobots.health import HealthServer
from imrobots_dingtalk.emulator import DingTalkEmulator

from .support import APP, SECRET, final, running, start_run, write_robots_toml

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")

FEEDBACK_SECRET = "feedback-secret-not-in-logs-0001"
URL_PASSWORD = "url-password-not-in-logs-0002"
QUESTION = "How do I get a refund?"


def _config(emu: DingTalkEmulator, directory: Path) -> Path:
    host = emu.base_url.split("//", 1)[1]
    return write_robots_toml(
        emu,
        directory,
        # A password inside an endpoint URL (issue 12, item 12: it was printed at start).
        openapi=f"http://robot:{URL_PASSWORD}@{host}",
        robot=f'feedback_secret = "{FEEDBACK_SECRET}"',
        settings='card_mode = "standard"\nrequest_timeout = 1.0',
        agent='use = "demo"\ndelay = 0.01',
        after="\n[robots.support.stream]\nretry_backoff = 0.05\nmax_backoff = 0.2\n"
        "rate_limit_backoff = 0.05",
    )


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` → value of a Prometheus text exposition (labels kept verbatim)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _metric(samples: dict[str, float], name: str, **labels: str) -> float:
    want = {"robot": "support", "platform": "dingtalk", **labels}
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        found = dict(
            (k, v.strip('"')) for k, _, v in (p.partition("=") for p in rest.rstrip("}").split(","))
        )
        if base == name and found == want:
            return value
    raise AssertionError(f"no sample {name} {want}")


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def _until(session: aiohttp.ClientSession, url: str, status: int, within: float) -> str:
    """Poll ``url`` until it answers ``status`` (a deadline, no fixed sleep); its body."""
    async with asyncio.timeout(within):
        while True:
            got, body = await _get(session, url)
            if got == status:
                return body
            await asyncio.sleep(0.02)


async def test_health_metrics_json_logs_and_no_secret_in_any_line(
    emu: DingTalkEmulator,
) -> None:
    lines: list[str] = []
    health_url: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def read(stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            lines.append(line)
            if "health: " in line and not health_url.done():
                message = json.loads(line)["message"]
                health_url.set_result(message.split("health: ", 1)[1].split("/healthz")[0])

    with tempfile.TemporaryDirectory() as tmp:
        config = _config(emu, Path(tmp))
        proc = await start_run(
            config,
            "--health-port",
            "0",
            "--grace",
            "5",
            before=("--log-format", "json"),
            output=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        reader = asyncio.create_task(read(proc.stdout))
        try:
            async with asyncio.timeout(20):
                base = await health_url
            async with aiohttp.ClientSession() as http:
                body = await _until(http, f"{base}/healthz", 200, 20)
                robot = json.loads(body)["robots"]["support"]
                assert robot["state"] == "connected" and robot["reconnects"] == 0, body

                # three questions, a quarter of the API calls answered "rate limited"
                emu.set_failure_rate(0.25, kind="qps")
                pushed = [
                    await emu.push_message(APP, text=QUESTION, conversation_id=f"cid-{i}")
                    for i in range(3)
                ]
                await emu.wait_for(lambda: sum(map(final, emu.cards.values())) == 3, 30)
                emu.set_failure_rate(0.0)
                await emu.redeliver_message(APP, pushed[0].msg_id)  # a duplicate

                # a forged feedback press and a genuine one
                card = next(c for c in emu.cards.values() if final(c))
                buttons = card.view["buttons"]
                await emu.press_button(
                    APP,
                    card_id=card.card_id,
                    action_id=buttons[0]["id"],
                    params={"value": buttons[0]["value"][:-3] + "AAA"},
                )
                await emu.press_button(
                    APP,
                    card_id=card.card_id,
                    action_id=buttons[0]["id"],
                    params={"value": buttons[0]["value"]},
                )

                async with asyncio.timeout(10):
                    while True:
                        status, text = await _get(http, f"{base}/metrics")
                        samples = _samples(text)
                        if _metric(samples, "imrobots_feedback_total") == 1 and _metric(
                            samples, "imrobots_deduplicated_total"
                        ):
                            break
                        await asyncio.sleep(0.05)

                # a dropped connection whose reconnect hangs at the ticket request: 503
                emu.stall_connections(stage="ticket", count=1)
                await emu.drop_connections(APP)
                unhealthy = json.loads(await _until(http, f"{base}/healthz", 503, 10))
                assert unhealthy["robots"]["support"]["state"] in ("connecting", "disconnected")
                await _until(http, f"{base}/healthz", 200, 15)
                status, text = await _get(http, f"{base}/metrics")
                samples = _samples(text)
            assert status == 200
        except BaseException:
            print("\n".join(lines[-60:]))
            raise
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(20):
                    code = await proc.wait()
            await reader

    # /metrics: each counter moved by what the emulator saw
    rate_limited = sum(1 for c in emu.calls if c.status == 403)
    assert rate_limited > 0
    assert _metric(samples, "imrobots_received_total") == 4  # three, and the redelivery
    assert _metric(samples, "imrobots_answered_total") == 3
    assert _metric(samples, "imrobots_failed_total") == 0
    assert _metric(samples, "imrobots_deduplicated_total") == 1
    assert _metric(samples, "imrobots_rate_limited_total") == rate_limited
    assert _metric(samples, "imrobots_call_errors_total") >= rate_limited
    assert _metric(samples, "imrobots_call_retries_total") >= 1
    assert _metric(samples, "imrobots_feedback_total") == 1
    assert _metric(samples, "imrobots_feedback_rejected_total") == 1
    assert _metric(samples, "imrobots_reconnects_total") == 1
    assert _metric(samples, "imrobots_recovered_total") == 0  # nothing was left open
    assert _metric(samples, "imrobots_adopted_total") == 0  # no shared store
    assert _metric(samples, "imrobots_connected") == 1
    updates = sum(1 for c in emu.calls if c.route == "interactiveCards.update" and c.status == 200)
    assert 1 <= _metric(samples, "imrobots_card_updates_total") <= updates
    assert _metric(samples, "imrobots_answer_latency_seconds_count") == 3
    assert _metric(samples, "imrobots_answer_latency_seconds_bucket", le="+Inf") == 3
    assert _metric(samples, "imrobots_first_update_latency_seconds_count") >= 1
    assert 0 <= _metric(samples, "imrobots_last_inbound_frame_age_seconds") < 30

    # item 10: every line is JSON, the stop summary names the faults, exit code 0
    assert code == 0, "\n".join(lines[-30:])
    records = [json.loads(line) for line in lines]  # raises on any plain line
    messages = [r["message"] for r in records]
    assert "stopped" in messages
    assert "running on the uvloop event loop; press Ctrl-C to stop" in messages
    [summary] = [m for m in messages if m.startswith("robot support on dingtalk stopped:")]
    assert f"{rate_limited} rate-limited responses" in summary and "1 reconnects" in summary
    assert "3 answered" in summary and "retries" in summary and "failed calls" in summary

    # item 12 and the log scan: no secret or issued token in any line
    secrets = {SECRET, FEEDBACK_SECRET, URL_PASSWORD}
    secrets.update(emu.state.tokens)  # access tokens issued to the robot
    for push in pushed:
        secrets.update(parse_qs(urlsplit(push.session_webhook).query).get("session", []))
    assert len(secrets) >= 3 + 1 + 3  # the configured three, a token, three sessions
    output = "\n".join(lines)
    leaked = [s for s in secrets if s and s in output]
    assert not leaked, leaked
    assert "robot:***@" in output  # the endpoint is still shown, its password redacted


async def test_healthz_says_503_until_connected_and_names_the_state(
    emu: DingTalkEmulator,
) -> None:
    """In-process: the state is read from the plugin's reports at each request."""
    async with running(emu, options=RuntimeOptions()) as runtime:
        server = HealthServer([runtime])
        base = await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                status, body = await _get(http, f"{base}/healthz")
                assert status == 200, body
                report: dict[str, Any] = json.loads(body)["robots"]["support"]
                assert report["connected"] and report["reconnects"] == 0
                runtime.platform.connection_status.disconnected("test")
                status, body = await _get(http, f"{base}/healthz")
                assert status == 503 and json.loads(body)["status"] == "unavailable"
        finally:
            await server.stop()


def test_health_port_without_the_metrics_extra_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from imrobots.cli import cli

    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.bot]\nplatform = "memory"\n[robots.bot.agent]\nuse = "demo"\n', encoding="utf-8"
    )
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # not installed
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--health-port", "0"])
    assert result.exit_code == 2
    assert 'pip install "imrobots[metrics]"' in result.output
