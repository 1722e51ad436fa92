"""An expected platform refusal, classified by the plugin, is logged as one line with the
platform's code and message: no traceback (kept for unexpected errors)."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("lark_oapi")

from imrobots import Robot
from imrobots.testing.conformance import open_rig
from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.emulator.frames import message_event
from tests.engine.conftest import eventually


async def test_a_classified_refusal_is_one_line_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An event about a message Feishu does not know (the reply answers 230002, which the
    plugin classifies as fatal): the answer reaches nobody, and the logs say so with the
    code and Feishu's message, with no traceback anywhere."""
    caplog.set_level(logging.INFO)
    async with open_rig(lambda: FeishuConsoleAdapter(), Robot(agent=lambda r: "ok")) as rig:
        adapter = rig.emulator
        assert isinstance(adapter, FeishuConsoleAdapter)
        envelope = message_event(
            app_id=adapter.app_id,
            tenant_key=adapter.app.tenant_key,
            verification_token=adapter.app.verification_token,
            message_id="om_does_not_exist",
            chat_id="oc_ghost",
            chat_type="p2p",
            sender_open_id="ou_ghost",
            message_type="text",
            content={"text": "hello?"},
        )
        adapter.emulator.deliver(adapter.app_id, envelope)
        await eventually(lambda: rig.runtime.stats.failed == 1)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, [(r.name, r.getMessage()) for r in tracebacks]
    refusals = [r for r in caplog.records if "230002" in r.getMessage()]
    assert refusals and all(r.levelno >= logging.WARNING for r in refusals)
    assert any("does not exist" in r.getMessage() for r in refusals)
    assert any("by no means" in r.getMessage() for r in caplog.records)
