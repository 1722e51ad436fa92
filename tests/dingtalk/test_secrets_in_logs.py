"""Issue 12: a scan of every log line of a robot on the emulator, error paths included
(expired tokens, failing and rate-limited calls, answers whose response was lost, a handler
that raises, an agent that raises, a forged press, a dropped connection), finds none of the
configured secrets and none of the tokens the platform issued."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest

from imrobots import Message, Reply, Robot
from imrobots.agents import AgentRequest
from imrobots.cli import _JsonFormatter
from imrobots.secret import RedactingFilter, redact_text, redact_url
from imrobots_dingtalk.emulator import DingTalkEmulator

from .support import APP, SECRET, running


class Troubled(Robot):
    """Raises for "boom", has an agent that raises for "fail", answers the rest."""

    def __init__(self) -> None:
        async def agent(request: AgentRequest) -> AsyncIterator[str]:
            yield "Let me see. "
            if request.text == "fail":
                raise RuntimeError(f"model call failed for {request.sender_id}")
            yield "Done."

        super().__init__(agent=agent)

    async def on_message(self, message: Message, reply: Reply) -> None:
        if message.text == "boom":
            raise ValueError("the handler broke")
        await super().on_message(message, reply)


async def test_no_secret_or_token_in_any_log_line_of_a_troubled_run(
    emu: DingTalkEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pushed = []
    async with running(emu, robot=Troubled()) as runtime:
        pushed.append(await emu.push_message(APP, text="hello", conversation_id="c-ok"))
        await emu.wait_for(lambda: runtime.stats.answered == 1, 15)
        emu.expire_tokens()  # the next calls meet the auth error and fetch a new token
        emu.set_failure_rate(0.3, kind="5xx")
        emu.withhold_responses(count=2, mode="disconnect")
        for i, text in enumerate(("boom", "fail", "again", "qps")):
            if text == "qps":
                emu.set_failure_rate(0.3, kind="qps")
            pushed.append(await emu.push_message(APP, text=text, conversation_id=f"c-{i}"))
        await emu.wait_for(lambda: runtime.stats.received == 5, 15)
        await runtime.wait_idle(30)
        emu.set_failure_rate(0.0)
        card = next(c for c in emu.cards.values() if len(c.view.get("buttons") or []) == 4)
        button = card.view["buttons"][0]
        await emu.press_button(
            APP, card_id=card.card_id, action_id=button["id"], params={"value": "v1.x.y"}
        )
        await emu.wait_for(lambda: runtime.stats.forged == 1, 10)
        await emu.drop_connections(APP)
        await emu.wait_for(lambda: runtime.platform.connection_status.reconnects == 1, 15)
    assert runtime.stats.failed >= 1  # the raising handler (error paths were taken)

    secrets = {SECRET, "test-feedback-secret", *emu.state.tokens}
    for push in pushed:
        secrets.update(parse_qs(urlsplit(push.session_webhook).query).get("session", []))
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    text = "\n".join(formatter.format(record) for record in caplog.records)
    assert "Traceback" in text  # tracebacks are part of the scan
    leaked = sorted(s for s in secrets if s and s in text)
    assert not leaked, leaked


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            "https://oapi.dingtalk.com/robot/send?access_token=abc123&timestamp=1&sign=xyz",
            "https://oapi.dingtalk.com/robot/send?access_token=***&timestamp=1&sign=***",
        ),
        ("http://user:hunter2@proxy.corp:3128", "http://user:***@proxy.corp:3128"),
        ("socks5://token@proxy.corp:1080", "socks5://***@proxy.corp:1080"),
        (
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx",
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***",
        ),
        (
            "https://h.example/x?client_secret=s&appKey=k&page=2",
            "https://h.example/x?client_secret=***&appKey=***&page=2",
        ),
        ("https://api.example.com/v1/answers?page=2", "https://api.example.com/v1/answers?page=2"),
    ],
)
def test_secrets_inside_urls_are_redacted(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert redact_text(f"calling {url}, then stopping") == f"calling {redacted}, then stopping"


def test_the_log_filter_redacts_messages_arguments_and_tracebacks() -> None:
    url = "https://oapi.dingtalk.com/robot/send?access_token=SEKRET"
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError as exc:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "posting to %s failed", (url,), (type(exc), exc, None)
        )
    RedactingFilter().filter(record)
    assert "SEKRET" not in logging.Formatter().format(record)
    assert "SEKRET" not in _JsonFormatter().format(record)  # --log-format json
    assert "access_token=***" in record.getMessage()
    assert "access_token=***" in json.loads(_JsonFormatter().format(record))["error"]
