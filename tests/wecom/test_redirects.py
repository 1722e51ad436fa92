"""No redirect is followed on a call to a WeCom host (issue 12, item 8): the API client
(tokens ride in the query string) and the robot's WebSocket upgrade treat a 3xx as an
error, logged, and nothing reaches the host it pointed at."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web

from imrobots.platform import FatalPlatformError, PlatformError, Secret
from imrobots.redirects import refuse_redirects
from imrobots_wecom.api import WeComApi
from imrobots_wecom.connection import AibotConnection, ConnectionOptions

from ..redirect_target import Redirector, RedirectTarget


async def test_the_api_client_follows_no_redirect(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with RedirectTarget() as other, Redirector(other.url) as redirector:
        # no trace config: the app mode's session has none (each call refuses itself)
        async with aiohttp.ClientSession() as session:
            api = WeComApi(session, endpoint=redirector.url, corp_id="ww1", secret=Secret("s3"))
            with pytest.raises(FatalPlatformError, match="redirect") as raised:
                await api.access_token()
            assert raised.value.code == "redirect"
        assert redirector.hits and other.hits == []
    assert any("redirects are not followed" in r.getMessage() for r in caplog.records)
    assert "s3" not in caplog.text and "corpsecret" not in caplog.text


async def test_api_calls_and_media_downloads_follow_no_redirect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The app mode's session has no redirect-refusing trace config (it would make
    aiohttp send about eight trace signals per call): a token-protected call and a media
    download, redirected once the token is there, are errors coded ``redirect``, and
    nothing reaches the host they pointed at."""
    caplog.set_level(logging.WARNING)
    async with RedirectTarget() as other:

        async def token(request: web.Request) -> web.StreamResponse:
            return web.json_response({"errcode": 0, "access_token": "tok", "expires_in": 7200})

        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPTemporaryRedirect(other.url + request.path_qs)

        app = web.Application()
        app.router.add_get("/cgi-bin/gettoken", token)
        app.router.add_route("*", "/cgi-bin/{tail:.*}", redirect)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as session:
                api = WeComApi(
                    session, endpoint=f"http://127.0.0.1:{port}", corp_id="ww1", secret=Secret("s3")
                )
                with pytest.raises(FatalPlatformError, match="redirect") as sent:
                    await api.post("/cgi-bin/message/send", {"touser": "u1", "msgtype": "text"})
                with pytest.raises(FatalPlatformError, match="redirect") as fetched:
                    await api.media("m1", limit=1000)
        finally:
            await runner.cleanup()
        assert sent.value.code == fetched.value.code == "redirect"
        assert other.hits == []
    assert sum("redirects are not followed" in r.getMessage() for r in caplog.records) == 2
    assert "tok" not in caplog.text


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
