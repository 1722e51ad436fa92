"""No redirect is followed on a call to a DingTalk host (issue 12, item 8).

Found: a 307 from an allowed sessionWebhook host was followed and the reply went to
another host. Every call (the ticket POST, the WebSocket upgrade, OpenAPI calls, the
sessionWebhook) now treats a redirect as an error, logged with the host it pointed at,
and nothing reaches the other host.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from imrobots import FatalPlatformError, Message, PlatformError
from imrobots.platform import CardAction
from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.platform import DingTalkPlatform

from ..redirect_target import RedirectTarget
from .support import APP, make_settings, running


@pytest_asyncio.fixture
async def other() -> AsyncIterator[RedirectTarget]:
    async with RedirectTarget() as target:
        yield target


async def _sink(event: Message | CardAction) -> None:
    pass


async def test_a_redirected_session_webhook_post_is_an_error_and_not_followed(
    emu: DingTalkEmulator, other: RedirectTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with running(emu) as runtime:
        platform = runtime.platform
        assert isinstance(platform, DingTalkPlatform)
        pushed = await emu.push_message(APP, text="hello", conversation_id="cid-redirect")
        emu.redirect_requests("/robot/sendBySession", f"{other.url}/robot/sendBySession")
        with pytest.raises(FatalPlatformError, match="redirect") as raised:
            await platform.api.post_webhook(
                pushed.session_webhook, {"msgtype": "text", "text": {"content": "hi"}}
            )
        assert raised.value.code == "redirect"
        assert "307" in str(raised.value) and "127.0.0.1" in str(raised.value)
    assert other.hits == []
    assert [c.status for c in emu.calls if c.route == "redirect"] == [307]
    assert any("redirects are not followed" in r.getMessage() for r in caplog.records)
    assert "session=" not in caplog.text  # the webhook's credential is never logged


async def test_a_redirected_ticket_request_at_start_is_a_clear_error(
    emu: DingTalkEmulator, other: RedirectTarget
) -> None:
    emu.redirect_requests("/v1.0/gateway/connections/open", f"{other.url}/open", count=50)
    platform = DingTalkPlatform(make_settings(emu, connect_timeout=3.0))
    with pytest.raises(PlatformError, match="redirect"):
        await platform.start(_sink)
    await platform.close()
    assert other.hits == []


async def test_a_redirected_websocket_upgrade_is_not_followed(
    emu: DingTalkEmulator, other: RedirectTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    emu.redirect_requests("/connect", f"{other.url}/connect")
    platform = DingTalkPlatform(make_settings(emu))
    await platform.start(_sink)  # the attempt after the refused redirect connects
    try:
        assert platform.connection is not None and platform.connection.connected
        assert platform.connection.stats.failed_attempts == 1
    finally:
        await platform.close()
    assert other.hits == []
    assert any("redirects are not followed" in r.getMessage() for r in caplog.records)
