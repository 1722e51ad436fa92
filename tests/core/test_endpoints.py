"""The shared check of configured platform endpoints: plain http:// and ws:// only for a
loopback host (the emulators), a one-line reason otherwise."""

from __future__ import annotations

import pytest

from imrobots.platform import endpoint_problem, is_loopback_host


@pytest.mark.parametrize(
    "url",
    [
        "https://open.feishu.cn",
        "https://api.dingtalk.com/",
        "http://127.0.0.1:8080",
        "http://127.3.4.5",
        "http://localhost:9000",
        "http://LOCALHOST.",
        "http://[::1]:9000",
    ],
)
def test_https_anywhere_and_http_on_loopback_are_accepted(url: str) -> None:
    assert endpoint_problem(url) is None


@pytest.mark.parametrize("url", ["wss://openws.work.weixin.qq.com", "ws://127.0.0.1:1/ws"])
def test_websocket_urls(url: str) -> None:
    assert endpoint_problem(url, websocket=True) is None
    assert endpoint_problem(url) is not None  # not an http(s) URL


@pytest.mark.parametrize(
    ("url", "websocket", "problem"),
    [
        (
            "http://qyapi.weixin.qq.com",
            False,
            "must use https:// for a remote host (http:// only for a loopback host: "
            "127.0.0.0/8, ::1, localhost), got 'http://qyapi.weixin.qq.com'",
        ),
        ("http://10.0.0.1", False, "must use https:// for a remote host"),
        ("http://127.0.0.1.example.com", False, "must use https:// for a remote host"),
        ("http://[::2]", False, "must use https:// for a remote host"),
        ("ws://example.com", True, "must use wss:// for a remote host (ws:// only"),
        ("api.dingtalk.com", False, "must start with https://, got 'api.dingtalk.com'"),
        ("ftp://x", False, "must start with https://"),
        ("https://", False, "must start with https://"),
        ("https://x:99999", False, "got an unreadable URL"),
    ],
)
def test_problems_are_one_line(url: str, websocket: bool, problem: str) -> None:
    line = endpoint_problem(url, websocket=websocket)
    assert line is not None and problem in line and "\n" not in line


def test_origin_only_and_credentials_never_echoed() -> None:
    assert endpoint_problem("https://open.feishu.cn/x", origin=True) is not None
    assert endpoint_problem("https://open.feishu.cn/", origin=True) is None
    line = endpoint_problem("http://robot:hunter2@example.com/?token=s3cret")
    assert line is not None and "hunter2" not in line and "s3cret" not in line
    assert "example.com" in line
    # malformed: urlsplit finds no user-info in "htp:/user:pw@host", the "@" still hides it
    line = endpoint_problem("htp:/admin:very-secret@127.0.0.1:1")
    assert line is not None and "very-secret" not in line


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("[::1]")
    assert is_loopback_host("localhost") and is_loopback_host("127.255.0.1")
    assert not is_loopback_host("128.0.0.1") and not is_loopback_host(None)
    assert not is_loopback_host("localhost.example.com")
