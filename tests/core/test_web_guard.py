"""Cross-site requests against the console and the emulators' control APIs (issue 12,
item 11): a cross-origin POST, a cross-origin WebSocket and a rebound Host are refused;
the per-start token is required for state-changing calls; the platform-facing routes the
official SDKs call keep answering."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from click.testing import CliRunner

from imrobots.cli import cli
from imrobots.console import Console
from imrobots.demo import Demo
from imrobots.demo_agent import DemoAgent
from imrobots.emulation import MemoryEmulator
from imrobots.plugins import PluginManager
from imrobots.webguard import TOKEN_HEADER, WebGuard, is_loopback
from imrobots_dingtalk.emulator import DingTalkEmulator

EVIL = "http://evil.example"


@pytest.fixture
async def demo(manager: PluginManager) -> AsyncIterator[Demo]:
    running = Demo(platforms=["memory"], manager=manager, agent=DemoAgent(delay=0.002))
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _token(console: Console) -> dict[str, str]:
    return {TOKEN_HEADER: console.token}


# ---------------------------------------------------------------------- the console


async def test_console_refuses_a_cross_origin_post(demo: Demo, http: aiohttp.ClientSession) -> None:
    assert demo.console is not None
    base = demo.console.url.rstrip("/")
    body = {"text": "transfer everything", "conversation_id": "direct"}
    # What a hostile page's fetch()/form sends: its Origin, no token.
    async with http.post(f"{base}/api/memory/messages", json=body, headers={"Origin": EVIL}) as r:
        assert r.status == 403
        assert "cross-origin" in (await r.json())["error"]
    # Even with the token (leaked somehow), a foreign Origin is refused.
    headers = {"Origin": EVIL, **_token(demo.console)}
    async with http.post(f"{base}/api/memory/messages", json=body, headers=headers) as r:
        assert r.status == 403
    async with http.get(f"{base}/api/memory/state") as r:
        assert (await r.json())["messages"] == []


async def test_console_refuses_a_cross_origin_websocket(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    assert demo.console is not None
    url = demo.console.url + "api/events"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers={"Origin": EVIL})
    assert refused.value.status == 403
    # the page's own origin still connects
    origin = demo.console.url.rstrip("/")
    async with http.ws_connect(url, headers={"Origin": origin}) as ws:
        assert not ws.closed


async def test_console_refuses_a_rebound_host(demo: Demo, http: aiohttp.ClientSession) -> None:
    assert demo.console is not None
    base = demo.console.url.rstrip("/")
    for path in ("/", "/api/platforms", "/api/memory/state"):
        async with http.get(base + path, headers={"Host": "evil.example"}) as r:
            assert r.status == 403, path
            assert "DNS rebinding" in (await r.json())["error"]
    async with http.get(base + "/api/platforms", headers={"Host": "localhost"}) as r:
        assert r.status == 200


async def test_console_state_changes_need_the_token(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    console = demo.console
    assert console is not None
    base = console.url.rstrip("/")
    body = {"text": "hello", "conversation_id": "direct"}
    async with http.post(f"{base}/api/memory/messages", json=body) as r:
        assert r.status == 403 and TOKEN_HEADER in (await r.json())["error"]
    async with http.post(
        f"{base}/api/memory/messages", json=body, headers={TOKEN_HEADER: "wrong"}
    ) as r:
        assert r.status == 403
    async with http.post(f"{base}/api/memory/messages", json=body, headers=_token(console)) as r:
        assert r.status == 200
    bearer = {"Authorization": f"Bearer {console.token}", "Origin": base}
    async with http.post(f"{base}/api/memory/clear", json=body, headers=bearer) as r:
        assert r.status == 200


async def test_the_console_page_hands_its_browser_the_token_as_a_cookie(demo: Demo) -> None:
    console = demo.console
    assert console is not None
    base = console.url.rstrip("/")
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.get(base + "/") as r:
            assert r.status == 200
            cookie = r.cookies[console.guard.cookie_name]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with browser.post(
            f"{base}/api/memory/messages",
            json={"text": "from the page", "conversation_id": "direct"},
            headers={"Origin": base},
        ) as r:
            assert r.status == 200


async def test_a_console_with_reads_guarded_needs_the_token_everywhere(
    http: aiohttp.ClientSession,
) -> None:
    emulator = MemoryEmulator()
    console = Console({"memory": emulator}, {}, token="s3cret-token-for-test", guard_reads=True)
    await console.start()
    try:
        base = console.url.rstrip("/")
        assert "s3cret" not in console.url
        async with http.get(base + "/api/platforms") as r:
            assert r.status == 403
        async with http.get(base + "/") as r:
            assert r.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(base + "/api/events")
        async with http.get(base + "/api/platforms", headers=_token(console)) as r:
            assert r.status == 200
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.get(base + "/?token=s3cret-token-for-test") as r:
                assert r.status == 200 and str(r.url) == base + "/"  # the token left the URL
            async with browser.get(base + "/api/platforms") as r:
                assert r.status == 200
    finally:
        await console.stop()


def test_binding_beyond_loopback_needs_an_explicit_token() -> None:
    with pytest.raises(ValueError, match="--token"):
        Console({"memory": MemoryEmulator()}, {}, host="0.0.0.0")
    for command in (["demo", "--host", "0.0.0.0"], ["console", "-c", "x.toml", "--host", "::"]):
        result = CliRunner().invoke(cli, command, env={"IMROBOTS_CONSOLE_TOKEN": ""})
        assert result.exit_code == 2, result.output
        assert "--token" in result.output and "loopback" in result.output
    # a short, guessable token is refused too
    result = CliRunner().invoke(
        cli, ["demo", "--host", "0.0.0.0"], env={"IMROBOTS_CONSOLE_TOKEN": "abc"}
    )
    assert result.exit_code == 2 and "at least 16" in result.output, result.output
    # an explicit token binds anywhere, and guards reads too
    console = Console({"memory": MemoryEmulator()}, {}, host="0.0.0.0", token="t" * 24)
    assert console.guard.token_for_reads


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1")
    assert is_loopback("localhost") and not is_loopback("0.0.0.0") and not is_loopback("::")
    guard = WebGuard(token="tok-QWERTY", public_hosts=frozenset({"Robots.Example.com"}))
    assert guard.host_allowed("robots.example.com:8300") and guard.host_allowed("[::1]:80")
    assert not guard.host_allowed("evil.example") and not guard.host_allowed(None)
    # a malformed Host is not read for the host it seems to start with
    for malformed in (
        "127.0.0.1:8300@evil.example",
        "localhost:80/evil.example",
        "127.0.0.1 evil.example",
        "[::1]:80@evil.example",
        "127.0.0.1:port",
        "",
    ):
        assert not guard.host_allowed(malformed), malformed
    assert guard.origin_allowed("http://127.0.0.1:8300", "127.0.0.1:8300")
    assert guard.origin_allowed("https://robots.example.com", "10.0.0.5:8300")
    assert not guard.origin_allowed("http://127.0.0.1:9999", "127.0.0.1:8300")
    assert not guard.origin_allowed("null", "127.0.0.1:8300")
    assert "QWERTY" not in repr(guard)


# ---------------------------------------------------------------------- the emulators


@pytest.fixture
async def dingtalk() -> AsyncIterator[DingTalkEmulator]:
    async with DingTalkEmulator(seed=3, ping_interval=None) as emulator:
        emulator.add_app("app", "secret")
        yield emulator


async def test_dingtalk_control_api_refuses_cross_site_requests(
    dingtalk: DingTalkEmulator, http: aiohttp.ClientSession
) -> None:
    base = f"{dingtalk.base_url}/_emulator"
    body = {"client_id": "app", "text": "forged"}
    async with http.post(f"{base}/messages", json=body, headers={"Origin": EVIL}) as r:
        assert r.status == 403
    async with http.post(f"{base}/apps", json={"client_id": "x", "client_secret": "y"}) as r:
        assert r.status == 403  # no token
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{base}/events", headers={"Origin": EVIL})
    assert refused.value.status == 403
    async with http.get(f"{base}/apps", headers={"Host": "evil.example"}) as r:
        assert r.status == 403
    assert dingtalk.pushes == [] and sorted(dingtalk.apps) == ["app"]
    token = {TOKEN_HEADER: dingtalk.control_token}
    async with http.post(f"{base}/messages", json=body, headers=token) as r:
        assert r.status == 200
    async with http.ws_connect(f"{base}/events") as ws:  # no Origin: a script
        assert (await ws.receive_json())["kind"] == "hello"


async def test_a_refusal_is_compact_json_as_the_control_apis_other_errors(
    dingtalk: DingTalkEmulator, demo: Demo, http: aiohttp.ClientSession
) -> None:
    """Before: the guard's 403 was ``{"error": "..."}`` with spaces, the 400 beside it
    ``{"error":"..."}``."""
    base = f"{dingtalk.base_url}/_emulator"
    token = {TOKEN_HEADER: dingtalk.control_token}
    async with http.post(f"{base}/apps", json={"client_id": "x"}, headers=token) as r:
        assert r.status == 400
        bad = await r.text()
    assert bad == '{"error":' + json.dumps(json.loads(bad)["error"], ensure_ascii=False) + "}"
    assert demo.console is not None
    for url, headers in (
        (f"{base}/apps", {}),  # no token
        (f"{base}/apps", {**token, "Origin": EVIL}),
        (f"{demo.console.url.rstrip('/')}/api/memory/faults", {"Origin": EVIL}),
    ):
        async with http.post(url, json={}, headers=headers) as r:
            assert r.status == 403
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"
            text = await r.text()
        reason = json.loads(text)["error"]
        assert text == '{"error":' + json.dumps(reason, ensure_ascii=False) + "}"
    # a Host header naming a non-ASCII host: written as is, in UTF-8
    async with http.get(f"{base}/apps", headers={"Host": "évil.example"}) as r:
        assert r.status == 403
        text = await r.text()
    assert "'évil.example'" in text and text.startswith('{"error":"the Host ')


async def test_dingtalk_platform_routes_stay_open_to_clients(
    dingtalk: DingTalkEmulator, http: aiohttp.ClientSession
) -> None:
    """What SDKs call is not guarded (it checks the app's credentials, as DingTalk does)."""
    async with http.post(
        f"{dingtalk.base_url}/v1.0/oauth2/accessToken",
        json={"appKey": "app", "appSecret": "secret"},
        headers={"Origin": EVIL},
    ) as r:
        assert r.status == 200 and (await r.json())["accessToken"]
    async with http.post(
        f"{dingtalk.base_url}/v1.0/gateway/connections/open",
        json={"clientId": "app", "clientSecret": "secret", "subscriptions": []},
    ) as r:
        assert r.status == 200 and (await r.json())["ticket"]


async def test_feishu_and_wecom_control_routes_refuse_a_rebound_host(
    http: aiohttp.ClientSession,
) -> None:
    # their emulators need their extras (the core-only CI job has none)
    pytest.importorskip("lark_oapi", reason='needs "imrobots[feishu]"')
    pytest.importorskip("cryptography", reason='needs "imrobots[wecom]"')
    from imrobots_feishu.emulator import FeishuEmulator
    from imrobots_wecom.emulator import WeComEmulator

    feishu = FeishuEmulator()
    await feishu.start()
    try:
        url = f"{feishu.base_url}/_emulator/state"
        async with http.get(url, headers={"Host": "evil.example"}) as r:
            assert r.status == 403
        async with http.get(url) as r:
            assert r.status == 200
    finally:
        await feishu.stop()
    wecom = WeComEmulator()
    await wecom.start()
    try:
        url = f"{wecom.base_url}/_emulator/files/nothing"
        async with http.get(url, headers={"Host": "evil.example"}) as r:
            assert r.status == 403
        async with http.get(url) as r:
            assert r.status != 403
    finally:
        await wecom.stop()


async def test_a_refusal_is_logged_without_the_token(
    demo: Demo, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    assert demo.console is not None
    base = demo.console.url.rstrip("/")
    caplog.set_level("WARNING", logger="imrobots.security")
    headers = {"Origin": EVIL, TOKEN_HEADER: demo.console.token}
    async with http.post(f"{base}/api/memory/faults", json={"kind": "drop"}, headers=headers) as r:
        assert r.status == 403
        assert demo.console.token not in await r.text()
    [record] = [r for r in caplog.records if r.name == "imrobots.security"]
    assert "refused POST /api/memory/faults" in record.getMessage()
    assert EVIL in record.getMessage() and demo.console.token not in caplog.text
