"""No redirect is followed on a call to a WeCom host (issue 12, item 8): the API client
(tokens ride in the query string) and the robot's WebSocket upgrade treat a 3xx as an
error, logged, and nothing reaches the host it pointed at."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from imrobots.platform import FatalPlatformError, PlatformError, Secret
from imrobots.redirects import refuse_redirects
from imrobots_wecom.api import WeComApi
from imrobots_wecom.connection import AibotConnection, ConnectionOptions

from ..redirect_target import Redirector, RedirectTarget


async def test_the_api_client_follows_no_redirect(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with RedirectTarget() as other, Redirector(other.url) as redirector:
        async with aiohttp.ClientSession(trace_configs=[refuse_redirects()]) as session:
            api = WeComApi(session, endpoint=redirector.url, corp_id="ww1", secret=Secret("s3"))
            with pytest.raises(FatalPlatformError, match="redirect") as raised:
                await api.access_token()
            assert raised.value.code == "redirect"
        assert redirector.hits and other.hits == []
    assert any("redirects are not followed" in r.getMessage() for r in caplog.records)
    assert "s3" not in caplog.text and "corpsecret" not in caplog.text


async def test_the_websocket_upgrade_follows_no_redirect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with RedirectTarget() as other, Redirector(other.url) as redirector:
        async with aiohttp.ClientSession(trace_configs=[refuse_redirects()]) as session:
            connection = AibotConnection(
                session,
                url=redirector.url.replace("http", "ws") + "/ws",
                bot_id="bot1",
                secret=Secret("bot-secret"),
                handler=lambda *args: None,
                options=ConnectionOptions(
                    connect_timeout=0.5, reconnect_initial=0.05, reconnect_max=0.1
                ),
            )
            with pytest.raises(PlatformError):
                await connection.start()
        assert redirector.hits and other.hits == []
    assert any("redirects are not followed" in r.getMessage() for r in caplog.records)
