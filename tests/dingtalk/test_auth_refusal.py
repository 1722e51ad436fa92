"""A short refusal of good credentials (issue 12, item 1).

Found: tokens expired, then ``POST /v1.0/oauth2/accessToken`` answered 400
``invalidClientIdOrSecret`` for 8 s and recovered: 0/50 final cards (10 stuck on
"streaming", 1 on "thinking", 39 messages with no card). A refusal of credentials that
worked before is DingTalk's passing fault: it is retried within the final-card deadline,
with one clear error line, and every answer ends final. Scaled here: a 2 s refusal and an
8 s final-card deadline. Credentials that never worked stay a fatal error at start.
"""

from __future__ import annotations

import logging

import pytest

from imrobots import FatalPlatformError, Message, RuntimeOptions, Secret
from imrobots.platform import CardAction
from imrobots.streaming import StreamPolicy
from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.platform import DingTalkPlatform

from .support import APP, QUESTION, cards_for, final, make_settings, running

REFUSAL = 2.0
"""Seconds the token endpoint refuses (8 s in the report, scaled down)."""
DEADLINE = 8.0
"""The final-card deadline (120 s by default, scaled down)."""
COUNT = 50


@pytest.mark.parametrize("mode", ["ai", "standard"])
async def test_a_short_refusal_of_good_credentials_loses_no_answer(
    emu: DingTalkEmulator, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    options = RuntimeOptions(
        stream=StreamPolicy(min_interval=0.2, final_deadline=DEADLINE, max_backoff=0.5)
    )
    async with running(emu, mode, delay=0.0, options=options) as runtime:  # type: ignore[arg-type]
        emu.expire_tokens()
        emu.refuse_credentials(REFUSAL)
        pushes = [
            await emu.push_message(APP, text=QUESTION, conversation_id=f"cid-refused-{i}")
            for i in range(COUNT)
        ]
        await emu.wait_for(
            lambda: sum(any(final(c) for c in cards_for(emu, p)) for p in pushes) == COUNT,
            DEADLINE + 10,
            what="every answer final",
        )
        await runtime.wait_idle(10)
        assert runtime.stats.answered == COUNT and runtime.stats.failed == 0
    refused = [c for c in emu.calls if c.error_code == "invalidClientIdOrSecret"]
    assert refused, "the token endpoint never refused: the test tested nothing"
    assert all(len(cards_for(emu, p)) == 1 for p in pushes)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert "refused the credentials" in line and "worked before" in line
    assert "invalidClientIdOrSecret" in line
    assert "support-secret" not in caplog.text  # the secret never shows
    assert any("accepts the credentials" in r.getMessage() for r in caplog.records)


async def test_credentials_that_never_worked_are_fatal_at_start(emu: DingTalkEmulator) -> None:
    platform = DingTalkPlatform(make_settings(emu, client_secret=Secret("wrong-secret")))

    async def sink(event: Message | CardAction) -> None:
        pass

    with pytest.raises(FatalPlatformError, match="invalidClientIdOrSecret"):
        await platform.start(sink)
    await platform.close()
