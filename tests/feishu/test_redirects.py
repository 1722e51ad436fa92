"""No redirect is followed on a call to a Feishu host (issue 12, item 8): endpoint
discovery (it carries the app secret) and the WebSocket upgrade treat a 3xx as an error,
logged, and nothing reaches the host it pointed at. (The OpenAPI calls go through
lark-oapi's httpx client, which follows no redirect by default.)"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from imrobots.platform import FatalPlatformError, PlatformUnavailable
from imrobots.redirects import refuse_redirects

pytest.importorskip("lark_oapi")

from imrobots_feishu.connection import Answer, ConnectionOptions, LongConnection

from ..redirect_target import Redirector, RedirectTarget


def _connection(session: aiohttp.ClientSession, domain: str) -> LongConnection:
    return LongConnection(
        session,
        domain=domain,
        app_id="cli_redirect",
        app_secret=lambda: "app-secret-value",
        handler=lambda kind, payload: Answer(),
        options=ConnectionOptions(connect_timeout=0.5, reconnect_initial=0.05),
    )


async def test_endpoint_discovery_follows_no_redirect(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with RedirectTarget() as other, Redirector(other.url) as redirector:
        async with aiohttp.ClientSession(trace_configs=[refuse_redirects()]) as session:
            connection = _connection(session, redirector.url)
            with pytest.raises(FatalPlatformError, match="redirect"):
                await connection.start()
            await connection.close()
        assert redirector.hits and other.hits == []
    assert "app-secret-value" not in caplog.text


async def _discovery(ws_url: str) -> AsyncIterator[str]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        url = f"{ws_url}/ws?device_id=d1&service_id=1"
        return web.json_response({"code": 0, "msg": "ok", "data": {"URL": url}})

    app = web.Application()
    app.router.add_post("/callback/ws/endpoint", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_websocket_upgrade_follows_no_redirect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with RedirectTarget() as other, Redirector(other.url) as redirector:
        discovery = _discovery(redirector.url.replace("http", "ws"))
        domain = await anext(discovery)
        try:
            async with aiohttp.ClientSession(trace_configs=[refuse_redirects()]) as session:
                connection = _connection(session, domain)
                with pytest.raises(PlatformUnavailable):
                    await connection.start()
                await connection.close()
        finally:
            await discovery.aclose()
        assert redirector.hits and other.hits == []
    assert any("redirects are not followed" in r.getMessage() for r in caplog.records)
