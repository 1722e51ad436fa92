"""The DingTalk plugin's parts: card JSON, error mapping, the token cache, settings, examples."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import pytest_asyncio
from aiohttp import web
from click.testing import CliRunner

from imrobots import (
    CardGone,
    CardStatus,
    ConfigError,
    FatalPlatformError,
    FeedbackRating,
    RateLimited,
    RetryableError,
    Secret,
    StreamingMode,
    error_card,
    final_card,
    thinking_card,
)
from imrobots.app import prepare_robot
from imrobots.cli import cli
from imrobots.config import load_config
from imrobots.platform import Op, OutcomeUnknown, RateLimit, Refused, Scope, SizeUnit
from imrobots_dingtalk.api import DingTalkApi, classify
from imrobots_dingtalk.cards import ai_card_params, standard_card
from imrobots_dingtalk.connection import Ack, ack_text
from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.messages import fit_param, split_bytes
from imrobots_dingtalk.platform import (
    CARD_TEXT_BYTES,
    DingTalkPlatform,
    DingTalkSettings,
    card_id_for,
    download_allowed,
    webhook_allowed,
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "dingtalk_support"
FEEDBACK = {rating: f"signed-{rating.value}" for rating in FeedbackRating}


# --------------------------------------------------------------------------- cards


def test_standard_card_is_the_seeds_shape() -> None:
    card = final_card("Where is my parcel?", "It ships **today**.", feedback=FEEDBACK)
    data = standard_card(card)
    assert data["config"] == {"autoLayout": True, "enableForward": True}
    assert data["header"] == {"title": {"type": "text", "text": "Where is my parcel?"}}
    markdown, divider, action = data["contents"]
    assert markdown["type"] == "markdown" and markdown["text"] == "It ships **today**."
    assert divider["type"] == "divider"
    assert action["type"] == "action"
    buttons = action["actions"]
    assert [b["label"]["text"] for b in buttons] == [r.label for r in FeedbackRating]
    assert [b["value"] for b in buttons] == list(FEEDBACK.values())
    for button in buttons:
        assert button["type"] == "button" and button["actionType"] == "request"
        assert button["label"]["type"] == "text"
    assert [b["status"] for b in buttons] == ["primary", "normal", "normal", "normal"]
    ids = [markdown["id"], divider["id"], action["id"]]
    ids += [b["id"] for b in buttons] + [b["label"]["id"] for b in buttons]
    assert len(ids) == len(set(ids))
    json.dumps(data)  # serialisable as the API's cardData string


def test_two_cards_never_share_ids() -> None:
    first = standard_card(final_card("q", "a", feedback=FEEDBACK))
    second = standard_card(final_card("q", "a", feedback=FEEDBACK))
    ids = {c["id"] for c in first["contents"]}
    assert ids.isdisjoint(c["id"] for c in second["contents"])


@pytest.mark.parametrize(
    ("card", "flow"),
    [
        (thinking_card("q"), "1"),
        (final_card("q", "answer", feedback=FEEDBACK), "3"),
        (error_card("q", "partial"), "5"),
    ],
)
def test_ai_card_params_are_strings(card: Any, flow: str) -> None:
    params = ai_card_params(card, content_key="msgContent")
    assert all(isinstance(v, str) for v in params.values())
    assert params["flowStatus"] == flow and params["title"] == "q"
    buttons = json.loads(params["buttons"])
    if card.status is CardStatus.FINAL:
        assert params["msgContent"] == "answer"
        assert [b["label"] for b in buttons] == [r.label for r in FeedbackRating]
        assert {"id", "label", "value"} <= set(buttons[0])
    else:
        assert buttons == []
    assert "msgContent" not in ai_card_params(card, content_key="msgContent", content=False)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (403, {"code": "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"}, RateLimited),
        (403, {"code": "Forbidden.AccessDenied.QpsLimitForApi"}, RateLimited),
        (403, {"code": "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi"}, RateLimited),
        (429, {"code": "systemBusy"}, RateLimited),
        (429, "<html>slow down</html>", RateLimited),
        (200, {"status": 1111, "wait": 5, "punish": "deny"}, RateLimited),
        (500, {"code": "system.busy", "message": "系统繁忙"}, RetryableError),
        (503, None, RetryableError),
        (400, {"code": "system.busy"}, RetryableError),
        (403, {"code": "Forbidden.AccessDenied.AccessTokenPermissionDenied"}, FatalPlatformError),
        (
            400,
            {"code": "param.stream.content", "message": "content is too large"},
            FatalPlatformError,
        ),
        (400, {"code": "param.stream.outTrackId"}, FatalPlatformError),
    ],
)
def test_classify(status: int, body: Any, expected: type[Exception]) -> None:
    error = classify("PUT /v1.0/card/streaming", status, body)
    assert type(error) is expected
    assert "\n" not in str(error) and "PUT /v1.0/card/streaming" in str(error)


@pytest.mark.parametrize(
    "code", ["param.stream.outTrackId", "cardInstance.notExist", "param.cardNotExist"]
)
def test_unknown_card_on_update_is_card_gone(code: str) -> None:
    error = classify("PUT x", 400, {"code": code, "requestid": "R-1"}, card_update=True)
    assert isinstance(error, CardGone)
    assert error.code == code and error.status == 400 and "R-1" in str(error)


def test_retry_after_header_is_kept() -> None:
    error = classify("POST x", 429, {}, headers={"Retry-After": "3"})
    assert isinstance(error, RateLimited) and error.retry_after == 3.0


# --------------------------------------------------------------------------- webhook hosts


@pytest.mark.parametrize(
    ("url", "extra", "allowed"),
    [
        ("https://oapi.dingtalk.com/robot/sendBySession?session=x", (), True),
        ("https://dingtalk.com/x", (), True),
        ("http://oapi.dingtalk.com/robot/sendBySession", (), False),
        ("https://oapi.dingtalk.com.evil.example/x", (), False),
        ("https://evildingtalk.com/x", (), False),
        ("https://169.254.169.254/latest/meta-data", (), False),
        ("http://127.0.0.1:8790/robot/sendBySession", (), False),
        ("http://127.0.0.1:8790/robot/sendBySession", ("127.0.0.1:8790",), True),
        ("http://127.0.0.1:9999/robot/sendBySession", ("127.0.0.1:8790",), False),
        ("http://localhost:1/x", ("localhost",), True),
        ("file:///etc/passwd", ("",), False),
        ("not a url", (), False),
    ],
)
def test_webhook_allowed(url: str, extra: tuple[str, ...], allowed: bool) -> None:
    assert webhook_allowed(url, extra) is allowed


@pytest.mark.parametrize(
    ("url", "extra", "allowed"),
    [
        ("https://down.dingtalk.com/media/x.png", (), True),
        ("https://ding-file.oss-cn-hangzhou.aliyuncs.com/x?Signature=s", (), True),
        ("http://down.dingtalk.com/media/x.png", (), False),
        ("https://aliyuncs.com.evil.example/x", (), False),
        ("https://169.254.169.254/latest/meta-data", (), False),
        ("http://127.0.0.1:8790/_emulator/files/t", (), False),
        ("http://127.0.0.1:8790/_emulator/files/t", ("127.0.0.1:8790",), True),
    ],
)
def test_download_allowed(url: str, extra: tuple[str, ...], allowed: bool) -> None:
    assert download_allowed(url, extra) is allowed


# --------------------------------------------------------------------------- token cache


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def test_token_is_cached_and_refreshed_before_expiry(
    session: aiohttp.ClientSession,
) -> None:
    async with DingTalkEmulator(seed=2, token_lifetime=1) as emu:
        emu.add_app("tok-app", "tok-secret")
        api = DingTalkApi(
            session, endpoint=emu.base_url, client_id="tok-app", client_secret=Secret("tok-secret")
        )
        tokens = await asyncio.gather(*(api.access_token() for _ in range(10)))
        assert len(set(tokens)) == 1 and api.token_fetches == 1  # one fetch for ten callers
        assert await api.access_token() == tokens[0] and api.token_fetches == 1
        # expireIn = 1 s: refreshed at half its lifetime, before it expires
        deadline = time.monotonic() + 3
        while api.token_fetches < 2:
            assert time.monotonic() < deadline, "the token was never refreshed"
            await asyncio.sleep(0.05)
            await api.access_token()
        fetches = [c for c in emu.calls if c.route == "oauth2.accessToken"]
        assert len(fetches) == 2
        assert all(c.request["appSecret"] == "***" for c in fetches)


async def test_token_is_refreshed_after_a_401(session: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator(seed=2) as emu:
        emu.add_app("tok-app", "tok-secret", robot_code="tok-app")
        api = DingTalkApi(
            session, endpoint=emu.base_url, client_id="tok-app", client_secret=Secret("tok-secret")
        )
        await api.access_token()
        emu.expire_tokens()
        stored = emu.add_file("tok-app", b"receipt", kind="picture")
        body = {"downloadCode": stored.download_code, "robotCode": "tok-app"}
        answer = await api.call("POST", "/v1.0/robot/messageFiles/download", body)
        assert "downloadUrl" in answer
        assert api.token_fetches == 2
        assert [c.status for c in emu.calls if c.route != "oauth2.accessToken"] == [401, 200]


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 (any free port) while the block runs; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_second_401_is_fatal(session: aiohttp.ClientSession) -> None:
    async def token(request: web.Request) -> web.Response:
        return web.json_response({"accessToken": "t", "expireIn": 7200})

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"code": "InvalidAuthentication", "message": "no"}, status=401)

    app = web.Application()
    app.router.add_post("/v1.0/oauth2/accessToken", token)
    app.router.add_post("/v1.0/x", refuse)
    async with serving(app) as port:
        api = DingTalkApi(
            session,
            endpoint=f"http://127.0.0.1:{port}",
            client_id="a",
            client_secret=Secret("s3cr3t-value"),
        )
        with pytest.raises(FatalPlatformError) as info:
            await api.call("POST", "/v1.0/x", {})
        assert api.token_fetches == 2
        assert "refused a fresh access token" in str(info.value)
        assert "s3cr3t-value" not in str(info.value)


async def test_bodies_are_compact_utf8_json_and_answers_read_as_json_reads(
    session: aiohttp.ClientSession,
) -> None:
    """A body goes out as compact UTF-8 JSON (orjson), a lone surrogate as its escape and
    a JSON string nested in it (``cardData``) intact (a lone surrogate makes the whole
    body ASCII, see :func:`imrobots.platform.dump_json`); an answer reads as ``json.loads``
    reads it (integers beyond 64 bits exact), one nested too deep as its text."""
    received: list[bytes] = []

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"accessToken": "t", "expireIn": 7200})

    async def echo(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(body=received[-1], content_type="application/json")

    async def deep(request: web.Request) -> web.Response:
        return web.Response(text="[" * 5000 + "]" * 5000, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1.0/oauth2/accessToken", token)
    app.router.add_put("/v1.0/echo", echo)
    app.router.add_put("/v1.0/deep", deep)
    async with serving(app) as port:
        api = DingTalkApi(
            session, endpoint=f"http://127.0.0.1:{port}", client_id="a", client_secret=Secret("s")
        )
        card_data = json.dumps({"markdown": "答案 **1**"}, ensure_ascii=False)
        body = {"cardBizId": "c1", "cardData": card_data, "n": 2**70, "text": "中文 \ud800"}
        answer = await api.call("PUT", "/v1.0/echo", body)
        raw = received[0]
        assert raw.decode("utf-8").startswith('{"cardBizId":"c1","cardData":"{')
        # a lone surrogate, which UTF-8 cannot carry, escaped (and the rest with it)
        assert raw.decode("ascii").endswith('"text":"\\u4e2d\\u6587 \\ud800"}')
        assert answer == body and type(answer["n"]) is int
        assert json.loads(answer["cardData"]) == json.loads(card_data)
        assert await api.call("PUT", "/v1.0/echo", {"text": "中文"}) == {"text": "中文"}
        assert received[1] == '{"text":"中文"}'.encode()  # compact, non-ASCII as is
        text = await api.call("PUT", "/v1.0/deep", {})
        assert text == "[" * 5000 + "]" * 5000


async def test_network_failure_is_retryable(session: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator() as emu:
        url = emu.base_url
    api = DingTalkApi(session, endpoint=url, client_id="a", client_secret=Secret("s"))
    with pytest.raises(RetryableError) as info:
        await api.access_token()
    assert "network error" in str(info.value)


async def test_a_request_sent_without_an_answer_is_an_unknown_outcome(
    session: aiohttp.ClientSession,
) -> None:
    async with DingTalkEmulator(seed=2) as emu:
        emu.add_app("out-app", "out-secret")
        api = DingTalkApi(
            session,
            endpoint=emu.base_url,
            client_id="out-app",
            client_secret=Secret("out-secret"),
            timeout=0.3,
        )
        body = {"robotCode": "out-app", "msgKey": "sampleText", "msgParam": '{"content":"x"}'}
        body["openConversationId"] = "cidG"
        emu.withhold_responses("robot.groupMessages.send")
        with pytest.raises(OutcomeUnknown) as info:
            await api.call("POST", "/v1.0/robot/groupMessages/send", body)
        assert "no answer within 0.3s" in str(info.value) and info.value.code == "timeout"
        emu.withhold_responses("robot.groupMessages.send", mode="disconnect")
        with pytest.raises(OutcomeUnknown) as info:
            await api.call("POST", "/v1.0/robot/groupMessages/send", body)
        assert info.value.code == "disconnected"
        assert len(emu.sent_messages) == 2, "both calls took effect"
        # a token fetch whose answer is lost changed nothing: plainly retryable
        api.invalidate_token()
        emu.withhold_responses("oauth2.accessToken")
        with pytest.raises(RetryableError) as token_info:
            await api.access_token()
        assert not isinstance(token_info.value, OutcomeUnknown)


async def test_a_request_that_never_left_is_retryable(session: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator() as emu:
        url = emu.base_url
    api = DingTalkApi(session, endpoint=url, client_id="a", client_secret=Secret("s"))
    api._token, api._token_expires = "t", time.monotonic() + 60  # skip the token fetch
    with pytest.raises(RetryableError) as info:
        await api.call("POST", "/v1.0/robot/groupMessages/send", {})
    assert not isinstance(info.value, OutcomeUnknown)
    assert "could not connect" in str(info.value) and "nothing was sent" in str(info.value)


async def test_downloads_follow_no_redirects(session: aiohttp.ClientSession) -> None:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

    app = web.Application()
    app.router.add_get("/file", redirect)
    async with serving(app) as port:
        api = DingTalkApi(session, endpoint="http://x", client_id="a", client_secret=Secret("s"))
        with pytest.raises(FatalPlatformError) as info:
            await api.fetch(f"http://127.0.0.1:{port}/file", max_bytes=100)
        assert info.value.code == "download.redirect" and "not followed" in str(info.value)


# --------------------------------------------------------------------------- messages


def test_split_bytes_cuts_at_paragraphs_and_never_inside_a_character() -> None:
    text = "\n\n".join(["第一段" * 300, "第二段" * 300, "第三段" * 300])  # 2,700 bytes each
    parts = split_bytes(text, 6_000)
    assert [len(p.encode()) for p in parts] == [5_402, 2_700]
    assert "\n\n".join(parts) == text
    one_line = "字" * 10
    parts = split_bytes(one_line, 7)  # no boundary: cut between characters
    assert parts == ["字字", "字字", "字字", "字字", "字字"]
    with pytest.raises(ValueError):
        split_bytes("x", 0)


def test_fit_param_counts_json_escaping() -> None:
    text = '"' * 100  # each quote is escaped to two bytes
    parts = fit_param(text, lambda part: {"content": part}, 120)
    assert "".join(parts) == text
    assert all(len(json.dumps({"content": p}).encode()) <= 120 for p in parts)


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_capabilities() -> None:
    settings = DingTalkSettings(
        client_id="dingabc", client_secret=Secret("xyz"), card_mode="standard"
    )
    assert settings.openapi_endpoint == "https://api.dingtalk.com"
    assert settings.gateway == "https://api.dingtalk.com"
    assert settings.robot == "dingabc"
    assert "xyz" not in repr(settings)
    assert settings.oapi_endpoint == "https://oapi.dingtalk.com"
    standard = DingTalkPlatform(settings).capabilities
    assert standard.streaming is StreamingMode.EDIT
    assert standard.update_interval == 1.0
    assert standard.limits() == (RateLimit(scope=Scope.API, rate=20.0),)
    assert standard.rate_headroom == pytest.approx(0.9)
    assert standard.classify("Forbidden.AccessDenied.QpsLimitForAppkeyAndApi") == "rate_limited"
    assert standard.classify("system.busy") == "retryable"
    assert standard.api_of(Op.OPEN) == standard.api_of(Op.SEND_CARD) == "interactiveCards.send"
    assert standard.api_of(Op.PUSH) == standard.api_of(Op.CLOSE) == "interactiveCards.update"
    # sizes in bytes: 20,000 for a sessionWebhook message, cards under it
    assert standard.text_unit is SizeUnit.BYTES
    assert standard.max_message_text == 20_000
    assert standard.max_text == CARD_TEXT_BYTES < 20_000
    assert standard.images and standard.files and standard.downloads and standard.proactive
    assert standard.max_image_bytes == standard.max_file_bytes == 20 * 1024 * 1024
    # no idempotency field on texts, images and files: never repeated after a time-out
    assert Op.SEND_TEXT not in standard.idempotent
    assert Op.SEND_IMAGE not in standard.idempotent and Op.SEND_FILE not in standard.idempotent
    assert {Op.OPEN, Op.SEND_CARD, Op.PUSH, Op.CLOSE, Op.UPDATE_CARD} <= standard.idempotent
    ai = DingTalkSettings(
        client_id="dingabc", client_secret=Secret("xyz"), card_mode="ai", ai_template_id="t"
    )
    native = DingTalkPlatform(ai).capabilities
    assert native.streaming is StreamingMode.NATIVE
    # pushes and closes of an AI card both call card/streaming: one bucket, which every
    # AI-card operation counts on (each calls two card APIs)
    assert native.api_of(Op.PUSH) == native.api_of(Op.CLOSE) == "card.streaming"
    assert native.api_of(Op.OPEN) == native.api_of(Op.SEND_CARD) == "card.streaming"
    assert native.api_of(Op.SEND_TEXT) == native.api_of(Op.SEND_IMAGE) == "robot.messages"


def test_card_ids_come_from_the_idempotency_key() -> None:
    assert card_id_for("3f2a9c") == "3f2a9c"
    assert card_id_for("answer-key-2") == "answer-key-2"
    long = "k" * 65
    assert card_id_for(long) == card_id_for(long)  # deterministic
    assert len(card_id_for(long)) == 64 and card_id_for(long) != card_id_for(long + "x")
    odd = card_id_for("robot:support/answer 1")
    assert len(odd) == 64 and all(c in "0123456789abcdef" for c in odd)


def test_permission_denied_on_a_card_api_is_refused_app_wide() -> None:
    body = {
        "code": "Forbidden.AccessDenied.AccessTokenPermissionDenied",
        "requestid": "R-9",
        "message": "...",
        "accessdenieddetail": {"requiredScopes": ["Card.Streaming.Write"]},
    }
    error = classify("PUT /v1.0/card/streaming", 403, body, card=True)
    assert isinstance(error, Refused) and error.app_wide
    text = str(error)
    assert "Card.Streaming.Write" in text and "developer console" in text and "R-9" in text
    assert "\n" not in text
    plain = classify("POST /v1.0/robot/groupMessages/send", 403, body)
    assert type(plain) is FatalPlatformError and "Card.Streaming.Write" in str(plain)


def _write(tmp_path: Path, settings: str) -> Path:
    path = tmp_path / "robots.toml"
    path.write_text(
        '[robots.bot]\nplatform = "dingtalk"\n[robots.bot.settings]\n'
        'client_id = "dingabc"\nclient_secret = "very-secret"\n' + settings,
        encoding="utf-8",
    )
    return path


def test_a_client_secret_of_white_space_is_empty(tmp_path: Path) -> None:
    """``client_secret = "{{DINGTALK_CLIENT_SECRET}}"`` exported as a space passed check
    (the Client ID was already stripped); run failed only when DingTalk refused it."""
    path = tmp_path / "robots.toml"
    path.write_text(
        '[robots.bot]\nplatform = "dingtalk"\n[robots.bot.agent]\nuse = "demo"\n'
        '[robots.bot.settings]\nclient_id = "dingabc"\nclient_secret = "  "\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 2, result.output
    assert f"error: {path}: robots.bot.settings.client_secret: is empty: " in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('ai_template_id = " "\n', "ai_template_id to be an AI card template id"),
        # a blank key, or another key on the built-in template: the text never showed
        ('ai_template_id = "mine.schema"\nai_content_key = ""\n', "ai_content_key to name"),
        (
            'ai_content_key = "content"\n',
            "ai_content_key: DingTalk's built-in AI card template shows the markdown of "
            "msgContent, not 'content'",
        ),
        ('card_mode = "fancy"\n', "card_mode"),
        ('openapi_endpoint = "api.dingtalk.com"\n', "openapi_endpoint must start with https://"),
        (
            'oapi_endpoint = "http://oapi.dingtalk.com"\n',
            "oapi_endpoint must use https:// for a remote host (http:// only for a loopback "
            "host: 127.0.0.0/8, ::1, localhost), got 'http://oapi.dingtalk.com'",
        ),
        ('gateway_endpoint = "http://10.0.0.7:8080"\n', "gateway_endpoint must use https://"),
        (  # a malformed URL with credentials: the password is not echoed
            'oapi_endpoint = "htp:/admin:very-secret@127.0.0.1:1"\n',
            "oapi_endpoint",
        ),
        ("update_interval = 0\n", "update_interval > 0"),
        ("update_interval = nan\n", "update_interval > 0, got nan"),
        ("request_timeout = inf\n", "request_timeout to be finite, got inf"),
        ('webhook_hosts = "127.0.0.1"\n', "webhook_hosts: expected a list, got str"),
        ('webhook_hosts = ["http://x/"]\n', 'entries like "host" or "host:port"'),
        ("max_text = 0\n", "max_text > 0"),
        ("colour = 1\n", "unknown key: colour"),
    ],
)
def test_bad_settings_give_one_line(tmp_path: Path, extra: str, message: str) -> None:
    path = _write(tmp_path, extra)
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        prepare_robot(config.robots["bot"], source=str(path))
    text = str(info.value)
    assert "\n" not in text and message in text and "robots.bot.settings" in text
    assert "very-secret" not in text


def test_a_reconnect_max_below_reconnect_initial_is_an_error_of_check(tmp_path: Path) -> None:
    """``reconnect_max = 2`` with ``reconnect_initial = 5`` passed check: the backoff's cap
    was below its first delay."""
    path = _write(
        tmp_path, 'reconnect_initial = 5\nreconnect_max = 2\n[robots.bot.agent]\nuse = "demo"\n'
    )
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert lines == [
        f"error: {path}: robots.bot.settings.reconnect_max: expected reconnect_max >= "
        "reconnect_initial (5 s), got 2"
    ], result.output


def test_an_idle_timeout_below_the_system_ping_interval_is_a_warning_of_check(
    tmp_path: Path,
) -> None:
    """``idle_timeout = 10`` passed check silently: DingTalk pings every 20-30 s, so the
    robot would replace a healthy connection again and again. It is a warning naming the
    field, the interval and its source; 30 s and the default are not."""
    agent = '[robots.bot.agent]\nuse = "demo"\n'
    path = _write(tmp_path, "idle_timeout = 10\n" + agent)
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.output
    assert warnings[0].startswith(
        f"warning: {path}: robots.bot.settings.idle_timeout: 10 s is below 30 s, the "
        "interval of DingTalk's SYSTEM pings (every 20-30 s, PROTOCOLS 1.5"
    ), warnings
    assert "replaced again and again" in warnings[0]
    for fine in ("idle_timeout = 30\n", ""):
        result = CliRunner().invoke(cli, ["check", str(_write(tmp_path, fine + agent))])
        assert result.exit_code == 0 and "warning: " not in result.output, result.output


def test_every_bad_setting_is_a_line_of_check_naming_its_field(tmp_path: Path) -> None:
    """Each problem on its own line, all in one run (the first one hid the others), and
    empty credentials (a variable exported empty) are errors before DingTalk refuses them."""
    path = tmp_path / "robots.toml"
    path.write_text(
        '[robots.bot]\nplatform = "dingtalk"\n[robots.bot.settings]\n'
        'client_id = "{{CID}}"\nclient_secret = "{{CSECRET}}"\n'
        'openapi_endpoint = "htp:/admin:very-secret@127.0.0.1:1"\n'
        "update_interval = -3\n"
        'webhook_hosts = ["http://x/"]\n'
        '[robots.bot.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["check", str(path)], env={"CID": "", "CSECRET": ""})
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    where = f"error: {path}: robots.bot.settings."
    assert [line.removeprefix(where).split(":", 1)[0] for line in lines] == [
        "client_id",
        "client_secret",
        "openapi_endpoint",
        "webhook_hosts",
        "update_interval",
    ], lines
    assert "is empty: the app's Client Secret (AppSecret)" in lines[1]
    assert "very-secret" not in result.output


def test_example_robots_toml() -> None:
    env = {"DINGTALK_CLIENT_ID": "dingexample", "DINGTALK_CLIENT_SECRET": "example-secret"}
    config = load_config(EXAMPLE / "robots.toml", env=env)
    prepared = prepare_robot(config.robots["support"], source="robots.toml")
    settings = prepared.platform_settings
    assert isinstance(settings, DingTalkSettings)
    assert settings.client_id == "dingexample"
    assert settings.client_secret.get() == "example-secret"
    assert settings.card_mode == "ai" and settings.builtin_template  # what a new app can use
    assert prepared.robot_class.__name__ == "SupportRobot"
    assert config.robots["support"].agent["use"] == "demo"


def test_example_seed_config_json() -> None:
    env = {"DINGTALK_CLIENT_ID": "dingexample", "DINGTALK_CLIENT_SECRET": "example-secret"}
    config = load_config(EXAMPLE / "config.json", env=env)
    robot = config.robots["support"]
    assert robot.platform == "dingtalk"
    prepared = prepare_robot(robot, source="config.json")
    assert isinstance(prepared.platform_settings, DingTalkSettings)
    assert prepared.platform_settings.client_id == "dingexample"


def test_example_needs_its_variables() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLE / "robots.toml", env={})
    assert "DINGTALK_CLIENT_ID" in str(info.value)


def test_every_setting_is_documented() -> None:
    page = (Path(__file__).parents[2] / "docs" / "platforms" / "dingtalk.md").read_text("utf-8")
    missing = [f.name for f in attrs.fields(DingTalkSettings) if f"| `{f.name}` |" not in page]
    assert missing == []


def test_the_platform_path_imports_no_sdk() -> None:
    """``requires`` lists what each path imports: the platform (and its emulator and console
    adapter) import no SDK, so the platform needs none; only ``imrobots_dingtalk.sdk`` (the
    handler for apps that keep their own dingtalk-stream client) imports ``dingtalk_stream``."""
    code = (
        "import json, sys\n"
        "import imrobots_dingtalk.plugin, imrobots_dingtalk.platform, imrobots_dingtalk.console\n"
        "import imrobots_dingtalk.emulator\n"
        "from imrobots.plugins import get_plugin_manager\n"
        "spec = get_plugin_manager().platforms()['dingtalk']\n"
        "print(json.dumps([spec.available, list(spec.spec.requires),"
        " sorted(m for m in sys.modules if m.startswith('dingtalk_stream'))]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    available, requires, sdk_modules = json.loads(result.stdout.splitlines()[-1])
    assert available is True and requires == [] and sdk_modules == []


@pytest.mark.parametrize(
    ("message_id", "ack"),
    [
        ("213d841d_972_1898bb26334_70a7", Ack()),
        ('a"b\\c\n€', Ack(code=400, message='bad data: "ünï" \u2028', data='{"response":{}}')),
        ("lone\ud800surrogate", Ack(code=400, message="bad messageId")),
    ],
)
def test_ack_frames_are_what_json_dumps_writes(message_id: str, ack: Ack) -> None:
    expected = json.dumps(
        {
            "code": ack.code,
            "headers": {"contentType": "application/json", "messageId": message_id},
            "message": ack.message,
            "data": ack.data,
        },
    )  # ASCII: a lone surrogate echoed from a hostile frame travels as an escape
    assert ack_text(message_id, ack) == expected
