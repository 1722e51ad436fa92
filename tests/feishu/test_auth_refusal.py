"""Credentials refused for a while after they worked (issue 12, item 1, applied to
Feishu): the long connection and the tenant token retry with backoff and one error line,
instead of giving up for good; credentials that never worked stay fatal at start."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from imrobots.config import structure
from imrobots.platform import CardAction, FatalPlatformError, Message, RetryableError

pytest.importorskip("lark_oapi")

from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.platform import FeishuPlatform, FeishuSettings


async def _sink(event: Message | CardAction) -> None:
    return None


async def _until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def test_a_refusal_after_it_worked_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    adapter = FeishuConsoleAdapter()
    await adapter.start()
    emulator = adapter.emulator
    platform = FeishuPlatform(structure(adapter.robot_settings(), FeishuSettings, path="feishu"))
    app = emulator.apps[adapter.app_id]
    good = app.app_secret
    try:
        await platform.start(_sink)
        app.app_secret = "rotated-for-a-while"  # Feishu refuses the right secret
        platform.api.drop_token()
        with pytest.raises(RetryableError, match="worked before"):
            await platform.api.token()
        with pytest.raises(RetryableError):
            await platform.api.token()
        await emulator.drop_connections(adapter.app_id)
        connection = platform.connection
        assert connection is not None
        await _until(lambda: "refuses the long connection" in caplog.text)
        app.app_secret = good  # and accepts it again
        await _until(lambda: bool(emulator.live(adapter.app_id)) and connection.connected.is_set())
        assert await platform.api.token()
    finally:
        await platform.close()
        await adapter.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([e for e in errors if "refuses the long connection" in e]) == 1, errors
    assert len([e for e in errors if "refused the credentials" in e]) == 1, errors
    assert "accepts the long connection" in caplog.text
    assert "accepts the credentials" in caplog.text
    assert good not in caplog.text


async def test_credentials_that_never_worked_are_fatal_at_start() -> None:
    adapter = FeishuConsoleAdapter()
    await adapter.start()
    settings = {**adapter.robot_settings(), "app_secret": "wrong"}
    platform = FeishuPlatform(structure(settings, FeishuSettings, path="feishu"))
    try:
        with pytest.raises(FatalPlatformError):
            await platform.start(_sink)
    finally:
        await platform.close()
        await adapter.stop()
