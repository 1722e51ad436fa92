"""Proxies from the environment (issue 12, build item 4): every platform's long
connection and API calls go through an HTTP proxy or a SOCKS5 proxy the test starts on
127.0.0.1, and straight to the emulator when NO_PROXY covers it."""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import ipaddress
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from imrobots.config import structure
from imrobots.demo_agent import DemoAgent
from imrobots.emulation import EmulatorAdapter
from imrobots.errors import ConfigError
from imrobots.examples import SupportRobot
from imrobots.platform import Platform, client_session
from imrobots.proxies import ProxySettings, exempt_loopback
from imrobots.runtime import RobotRuntime, RuntimeOptions
from imrobots.store import MemoryStore
from tests.proxy_servers import HttpProxy, Socks5Proxy

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

needs_socks = pytest.mark.skipif(
    importlib.util.find_spec("aiohttp_socks") is None, reason='needs "imrobots[proxy]"'
)
"""SOCKS needs the proxy extra (the core-only CI job has no extras; the full job has all)."""
needs_tls_tools = pytest.mark.skipif(
    importlib.util.find_spec("cryptography") is None,
    reason="needs cryptography to make a certificate (the wecom extra)",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the machine running the tests leaks in."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# ---------------------------------------------------------------------- the rules


def test_which_variable_applies() -> None:
    env = {
        "HTTPS_PROXY": "http://upper:1",
        "https_proxy": "http://lower:2",
        "ALL_PROXY": "socks5h://all:3",
    }
    settings = ProxySettings.from_env(env)
    https = settings.for_url(aiohttp.client.URL("wss://api.example.com/x"))
    assert https is not None and str(https.url) == "http://lower:2"  # lower case wins
    plain = settings.for_url(aiohttp.client.URL("http://api.example.com/"))
    assert plain is not None and plain.kind == "socks5h" and plain.variable == "ALL_PROXY"
    bare = ProxySettings.from_env({"HTTP_PROXY": "proxy.corp:3128"})
    assert str(bare.routes[0].url) == "http://proxy.corp:3128"
    assert ProxySettings.from_env({}).routes == []


@pytest.mark.parametrize(
    ("host", "direct"),
    [
        ("internal.corp", True),
        ("api.internal.corp", True),
        ("notinternal.corp", False),
        ("svc.lan", True),
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("::1", True),
        ("localhost", True),
        ("api.dingtalk.com", False),
    ],
)
def test_no_proxy_entries(host: str, direct: bool) -> None:
    env = {
        "ALL_PROXY": "http://proxy:8080",
        "NO_PROXY": "internal.corp, .svc.lan:8443, 10.0.0.0/8, [::1], localhost",
    }
    settings = ProxySettings.from_env(env)
    url = aiohttp.client.URL.build(scheme="https", host=host, path="/")
    assert (settings.for_url(url) is None) is direct
    assert ProxySettings.from_env({**env, "NO_PROXY": "x, *"}).for_url(url) is None


def test_an_unusable_proxy_is_a_clear_error_without_its_password() -> None:
    with pytest.raises(ConfigError, match="HTTPS_PROXY") as bad:
        ProxySettings.from_env({"HTTPS_PROXY": "ftp://user:hunter2@proxy:21"})
    assert "hunter2" not in str(bad.value) and "'ftp' is not supported" in str(bad.value)
    route = ProxySettings.from_env({"ALL_PROXY": "socks5://user:hunter2@p:1080"}).routes[0]
    assert "hunter2" not in str(route) and "hunter2" not in repr(route)


@pytest.mark.parametrize("value", ["http://user:hunter2@prox y:3128", "user:hunter2@pro%xy:3128"])
def test_a_proxy_host_yarl_refuses_late_is_a_config_error(value: str) -> None:
    """Before: yarl accepted the URL and refused its host only when the route was built,
    so a typo in HTTPS_PROXY stopped the robot with a bare ValueError traceback."""
    with pytest.raises(ConfigError, match="HTTPS_PROXY is not a proxy URL") as bad:
        ProxySettings.from_env({"HTTPS_PROXY": value})
    assert "hunter2" not in str(bad.value)


def test_socks5_credentials_longer_than_rfc_1929_allows_are_a_config_error() -> None:
    """Before: accepted, then every connection failed with aiohttp-socks' "byte must be
    in range(0, 256)", retried for ever."""
    secret = "hunter2" + "x" * 250
    with pytest.raises(ConfigError, match="at most 255 bytes") as bad:
        ProxySettings.from_env({"ALL_PROXY": f"socks5h://robot:{secret}@127.0.0.1:1080"})
    assert "ALL_PROXY" in str(bad.value) and "hunter2" not in str(bad.value)
    fits = ProxySettings.from_env({"ALL_PROXY": f"socks5://robot:{'x' * 255}@127.0.0.1:1"})
    assert fits.all is not None and fits.all.password == "x" * 255


async def test_socks_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp_socks", None)  # as if not installed
    with pytest.raises(ConfigError, match=r'pip install "imrobots\[proxy\]"') as missing:
        client_session(env={"ALL_PROXY": "socks5h://user:hunter2@127.0.0.1:9"})
    assert "SOCKS" in str(missing.value) and "hunter2" not in str(missing.value)
    # an HTTP proxy needs nothing extra
    await client_session(env={"HTTPS_PROXY": "http://127.0.0.1:9"}).close()


def test_commands_that_run_emulators_send_loopback_direct() -> None:
    env = {"HTTP_PROXY": "http://proxy:1", "NO_PROXY": "corp.example"}
    exempt_loopback(env)
    settings = ProxySettings.from_env(env)
    for host in ("127.0.0.1", "localhost", "::1", "corp.example"):
        url = aiohttp.client.URL.build(scheme="http", host=host, path="/")
        assert settings.for_url(url) is None, host
    assert env["no_proxy"] == env["NO_PROXY"]
    untouched: dict[str, str] = {}
    exempt_loopback(untouched)
    assert untouched == {}  # no proxy configured: nothing to exempt


# ---------------------------------------------------------------------- plain client calls


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[web.AppRunner, int]]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"echo {message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/ws", socket)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner, int(runner.addresses[0][1])
    await runner.cleanup()


def _self_signed(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for 127.0.0.1 and a client context trusting it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


@needs_tls_tools
async def test_https_and_wss_tunnel_through_connect_with_proxy_credentials(
    tmp_path: Path,
) -> None:
    """The real platforms' case: TLS to the platform inside a CONNECT tunnel."""
    server_ssl, client_ssl = _self_signed(tmp_path)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"secure": request.secure})

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello over wss")
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/ws", socket)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        async with HttpProxy(credentials="robot:pa55") as proxy:
            env = {"HTTPS_PROXY": f"http://robot:pa55@127.0.0.1:{proxy.port}"}
            async with client_session(env=env) as session:
                async with session.get(f"https://127.0.0.1:{port}/hello", ssl=client_ssl) as r:
                    assert (await r.json()) == {"secure": True}
                async with session.ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=client_ssl) as ws:
                    assert (await ws.receive_str()) == "hello over wss"
            assert ("CONNECT", "127.0.0.1", port) in proxy.targets
            assert all(seen.method is None for seen in proxy.seen)  # TLS inside: opaque
            wrong = {"HTTPS_PROXY": f"http://robot:wrong@127.0.0.1:{proxy.port}"}
            async with client_session(env=wrong) as session:
                with pytest.raises(aiohttp.ClientHttpProxyError) as refused:
                    await session.get(f"https://127.0.0.1:{port}/hello", ssl=client_ssl)
                assert refused.value.status == 407
    finally:
        await runner.cleanup()


@needs_socks
async def test_socks5_credentials_and_remote_names(
    echo_server: tuple[web.AppRunner, int],
) -> None:
    _, port = echo_server
    async with Socks5Proxy(
        resolve=lambda host: "127.0.0.1", credentials=("robot", "pa55")
    ) as proxy:
        env = {"ALL_PROXY": f"socks5h://robot:pa55@127.0.0.1:{proxy.port}"}
        # a name only the proxy can resolve: socks5h hands it over unresolved
        async with (
            client_session(env=env) as session,
            session.get(f"http://platform.proxy.test:{port}/hello") as r,
        ):
            assert (await r.json()) == {"path": "/hello"}
        assert proxy.address_types == ["domain"]
        assert proxy.targets == [("socks5", "platform.proxy.test", port)]
        bad = {"ALL_PROXY": f"socks5://robot:wrong@127.0.0.1:{proxy.port}"}
        async with client_session(env=bad) as session:
            with pytest.raises(aiohttp.ClientConnectionError, match="socks5://robot:\\*\\*\\*@"):
                await session.get(f"http://127.0.0.1:{port}/hello")


@needs_socks
async def test_a_request_own_proxy_and_no_proxy_are_respected(
    echo_server: tuple[web.AppRunner, int],
) -> None:
    _, port = echo_server
    async with HttpProxy() as proxy, Socks5Proxy() as socks:
        env = {"ALL_PROXY": f"socks5://127.0.0.1:{socks.port}", "NO_PROXY": "127.0.0.1"}
        async with client_session(env=env) as session:
            async with session.get(f"http://127.0.0.1:{port}/hello") as r:
                assert r.status == 200
            assert socks.targets == []  # NO_PROXY: direct
            proxy_url = f"http://127.0.0.1:{proxy.port}"
            async with session.get(f"http://127.0.0.1:{port}/hello", proxy=proxy_url) as r:
                assert r.status == 200
            assert proxy.targets == [("forward", "127.0.0.1", port)]


# ---------------------------------------------------------------------- each platform


def _dingtalk() -> tuple[EmulatorAdapter, Callable[[EmulatorAdapter], Platform]]:
    from imrobots_dingtalk.console import DingTalkConsoleAdapter
    from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

    return DingTalkConsoleAdapter(), lambda e: DingTalkPlatform(
        structure(e.robot_settings(), DingTalkSettings, path="dingtalk")
    )


def _feishu() -> tuple[EmulatorAdapter, Callable[[EmulatorAdapter], Platform]]:
    pytest.importorskip("lark_oapi")
    from imrobots_feishu.console import FeishuConsoleAdapter
    from imrobots_feishu.platform import FeishuPlatform, FeishuSettings

    return FeishuConsoleAdapter(), lambda e: FeishuPlatform(
        structure(e.robot_settings(), FeishuSettings, path="feishu")
    )


def _wecom(mode: Any) -> Callable[[], tuple[EmulatorAdapter, Callable[..., Platform]]]:
    def make() -> tuple[EmulatorAdapter, Callable[[EmulatorAdapter], Platform]]:
        pytest.importorskip("wechatpy")
        from imrobots_wecom.console import WeComConsoleAdapter
        from imrobots_wecom.platform import WeComPlatform, WeComSettings

        return WeComConsoleAdapter(mode=mode), lambda e: WeComPlatform(
            structure(e.robot_settings(), WeComSettings, path="wecom")
        )

    return make


PLATFORMS: dict[str, Callable[[], tuple[EmulatorAdapter, Callable[..., Platform]]]] = {
    "dingtalk": _dingtalk,
    "feishu": _feishu,
    "wecom-robot": _wecom("robot"),
    "wecom-app": _wecom("app"),
}
LONG_CONNECTION = {"dingtalk": True, "feishu": True, "wecom-robot": True, "wecom-app": False}
"""WeCom's robot mode has a long connection and no HTTP API; its app mode the reverse."""
HTTP_API = {"dingtalk": True, "feishu": True, "wecom-robot": False, "wecom-app": True}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, str]], None]]:
    yield lambda env: [monkeypatch.setenv(k, v) for k, v in env.items()] and None


async def _answer_one(name: str) -> tuple[EmulatorAdapter, str]:
    """Start a robot on ``name``'s emulator, ask it something, wait for its final card;
    return the emulator and the emulator's host:port."""
    emulator, make_platform = PLATFORMS[name]()
    await emulator.start()
    runtime = RobotRuntime(
        name="support",
        robot=SupportRobot(agent=DemoAgent(delay=0.001)),
        platform=emulator.create_platform() or make_platform(emulator),
        store=MemoryStore(),
        options=RuntimeOptions(stale_after=None),
    )
    try:
        await runtime.start()
        await emulator.say(
            text="How do I get a refund?",
            conversation_id="group-support",
            group=True,
            user_id="alice",
            user_name="Alice",
            mention=True,
        )

        def answered() -> bool:  # a final card, or (WeCom app mode) the robot's message
            state = emulator.state()
            return any(c["status"] == "final" for c in state["cards"]) or any(
                m["from_robot"] for m in state["messages"]
            )

        await emulator.wait_for(answered, timeout=30)
    finally:
        await runtime.stop(timeout=5)
        await emulator.stop()
    assert emulator.base_url is not None
    return emulator, emulator.base_url.split("//", 1)[1]


def _check_through(name: str, proxy: HttpProxy | Socks5Proxy, authority: str) -> None:
    port = int(authority.rsplit(":", 1)[1])
    ours = [s for s in proxy.seen if s.port == port]
    assert ours, proxy.seen
    assert all(s.host == "127.0.0.1" for s in ours)
    upgrades = [s for s in ours if s.websocket]
    calls = [s for s in ours if not s.websocket]
    assert bool(upgrades) is LONG_CONNECTION[name], ours
    assert bool(calls) is HTTP_API[name], ours


@pytest.mark.parametrize("name", list(PLATFORMS))
async def test_each_platform_through_an_http_proxy(
    name: str, environment: Callable[[dict[str, str]], None]
) -> None:
    async with HttpProxy() as proxy:
        environment({"HTTP_PROXY": f"http://127.0.0.1:{proxy.port}"})
        _, authority = await _answer_one(name)
    _check_through(name, proxy, authority)


@pytest.mark.parametrize("name", list(PLATFORMS))
@needs_socks
async def test_each_platform_through_a_socks5_proxy(
    name: str, environment: Callable[[dict[str, str]], None]
) -> None:
    async with Socks5Proxy() as proxy:
        environment({"ALL_PROXY": f"socks5h://127.0.0.1:{proxy.port}"})
        _, authority = await _answer_one(name)
    _check_through(name, proxy, authority)


@pytest.mark.parametrize("name", list(PLATFORMS))
@needs_socks
async def test_each_platform_goes_direct_when_no_proxy_covers_loopback(
    name: str, environment: Callable[[dict[str, str]], None]
) -> None:
    async with HttpProxy() as proxy, Socks5Proxy() as socks:
        environment(
            {
                "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}",
                "ALL_PROXY": f"socks5://127.0.0.1:{socks.port}",
                "NO_PROXY": "localhost,127.0.0.1,::1",
            }
        )
        await _answer_one(name)
    assert proxy.seen == [] and socks.seen == []


@pytest.mark.parametrize("name", list(PLATFORMS))
@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "127.0.0.1:8080", "*.nowhere,127.0.0.1"])
async def test_each_platform_honours_no_proxy_as_documented(
    name: str, no_proxy: str, environment: Callable[[dict[str, str]], None]
) -> None:
    """A CIDR network, an entry with a port: the forms docs/deploying.md lists. Before:
    Feishu's API calls (httpx, reading the variables itself) went through the proxy."""
    async with HttpProxy() as proxy:
        environment({"HTTP_PROXY": f"http://127.0.0.1:{proxy.port}", "NO_PROXY": no_proxy})
        await _answer_one(name)
    assert proxy.seen == []


async def test_feishu_api_calls_send_the_proxy_credentials(
    environment: Callable[[dict[str, str]], None],
) -> None:
    async with HttpProxy(credentials="robot:p@ss:w/rd") as proxy:
        environment({"HTTP_PROXY": f"robot:p%40ss%3Aw%2Frd@127.0.0.1:{proxy.port}"})
        _, authority = await _answer_one("feishu")
    _check_through("feishu", proxy, authority)


def test_feishu_refuses_a_socks4_proxy_at_start() -> None:
    pytest.importorskip("lark_oapi")
    from imrobots.secret import Secret
    from imrobots_feishu.api import FeishuApi

    env = {"HTTPS_PROXY": "socks4a://robot:hunter2@127.0.0.1:1080"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError, match="not SOCKS4") as refused:
            FeishuApi(app_id="cli_x", app_secret=Secret("s"), domain="https://open.feishu.cn")
    assert "HTTPS_PROXY" in str(refused.value) and "hunter2" not in str(refused.value)


@needs_socks
async def test_a_dead_proxy_is_a_connection_error_naming_it() -> None:
    async with Socks5Proxy() as gone:
        port = gone.port
    env = {"ALL_PROXY": f"socks5://robot:hunter2@127.0.0.1:{port}"}
    async with client_session(env=env) as session:
        with pytest.raises(aiohttp.ClientConnectionError) as failed:
            await asyncio.wait_for(session.get("http://127.0.0.1:9/"), 10)
    assert f"127.0.0.1:{port}" in str(failed.value) and "hunter2" not in str(failed.value)


def test_check_reports_the_proxy_variables_run_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`imrobots check` "with the production environment" lists what `run` would refuse
    at connect time. Before: a bad proxy scheme or SOCKS without the extra passed `check`
    ("1 robot valid") and stopped `run` only after the robots were built."""
    from imrobots.config import check_config

    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.support]\nplatform = "memory"\n\n[robots.support.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    assert check_config(config, env={"HTTPS_PROXY": "http://127.0.0.1:9"}).ok
    bad = check_config(config, env={"ALL_PROXY": "socks9://user:hunter2@127.0.0.1:1080"})
    assert not bad.ok
    (line,) = bad.errors
    assert "ALL_PROXY" in line and "'socks9' is not supported" in line and "hunter2" not in line
    monkeypatch.setitem(sys.modules, "aiohttp_socks", None)  # as if not installed
    (line,) = check_config(config, env={"all_proxy": "socks5h://127.0.0.1:1080"}).errors
    assert 'pip install "imrobots[proxy]"' in line
    # the console replaces the robots' endpoints with emulators: not its concern there
    assert check_config(config, env={"ALL_PROXY": "socks9://p:1"}, emulated=True).ok
