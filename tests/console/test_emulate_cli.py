"""`imrobots emulate PLATFORM` and how the demo picks its agent."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import tomllib

import aiohttp
import pytest
from click.testing import CliRunner

from imrobots.cli import cli
from imrobots.demo import demo_agent
from imrobots.demo_agent import DemoAgent


def test_emulate_prints_working_settings_and_stops_on_sigint() -> None:
    pytest.importorskip("dingtalk_stream")
    process = subprocess.Popen(
        [sys.executable, "-m", "imrobots", "emulate", "dingtalk"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line or line.startswith("Press Ctrl-C"):
                break
            lines.append(line)
        text = "".join(lines)
        base_url = re.search(r"listening at (http://127\.0\.0\.1:\d+)", text)
        assert base_url, text
        snippet = text[text.index("[robots.support]") : text.index("or, for the")]
        settings = tomllib.loads(snippet)["robots"]["support"]["settings"]
        assert settings["openapi_endpoint"] == base_url.group(1)
        assert f"export DINGTALK_OPENAPI_ENDPOINT={base_url.group(1)}" in text

        async def token() -> int:
            async with aiohttp.ClientSession() as session:
                response = await session.post(
                    base_url.group(1) + "/v1.0/oauth2/accessToken",
                    json={"appKey": settings["client_id"], "appSecret": settings["client_secret"]},
                )
                return response.status

        assert asyncio.run(token()) == 200  # the printed credentials really work
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and "stopped" in out


def test_emulate_unknown_or_in_process_platform_is_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["emulate", "telex"])
    assert result.exit_code == 2 and "no emulator for platform 'telex'" in result.output
    result = CliRunner().invoke(cli, ["emulate", "memory"])
    assert result.exit_code == 2 and "nothing to emulate" in result.output


def test_demo_uses_the_demo_agent_offline_and_openai_when_configured() -> None:
    agent, description = demo_agent({})
    assert isinstance(agent, DemoAgent) and "built-in demo agent" in description
    pytest.importorskip("openai")
    from imrobots.openai_agent import OpenAIAgent

    agent, description = demo_agent(
        {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_MODEL": "local-model"}
    )
    assert isinstance(agent, OpenAIAgent) and agent.model == "local-model"
    assert "local-model" in description and "127.0.0.1:9" in description
