"""The OpenAI-compatible agent, against a fake server over a real socket on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from imrobots import Attachment, Conversation, ConversationKind, Message, Quote, Sender
from imrobots.agents import AgentRequest, Turn, as_agent
from imrobots.errors import ConfigError
from imrobots.openai_agent import OpenAIAgent, OpenAIAgentError
from imrobots.secret import Secret
from tests.fake_openai import FakeOpenAIServer

# The core-only CI job installs no extras: these tests need the "openai" extra.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openai") is None, reason='needs the "openai" extra'
)

SECRET = "sk-test-SECRET-0123456789abcdef"
REPLY = "Hello there! Your parcel ships tomorrow, tracking link follows."

_ENV = ("OPENAI_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OPENAI_* settings from the developer's shell, and never a proxy for 127.0.0.1."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(reply=REPLY, chunk_size=5) as fake:
        yield fake


def make_agent(server: FakeOpenAIServer, **kwargs: Any) -> OpenAIAgent:
    options: dict[str, Any] = {
        "model": "fake-model",
        "base_url": server.base_url,
        "api_key": SECRET,
    }
    options.update(kwargs)
    return OpenAIAgent(**options)


def request(text: str = "When does my parcel ship?", *history: Turn) -> AgentRequest:
    return AgentRequest(text=text, conversation_id="c1", sender_id="u1", history=history)


async def collect(agent: OpenAIAgent, req: AgentRequest) -> list[str]:
    try:
        return [delta async for delta in agent.stream(req)]
    finally:
        await agent.aclose()


# --- streaming -------------------------------------------------------------------------------


async def test_deltas_arrive_in_order(server: FakeOpenAIServer) -> None:
    deltas = await collect(make_agent(server), request())
    expected = [REPLY[i : i + 5] for i in range(0, len(REPLY), 5)]
    assert deltas == expected
    assert "".join(deltas) == REPLY


async def test_as_agent_accumulates_to_the_full_text(server: FakeOpenAIServer) -> None:
    agent = make_agent(server)
    try:
        snapshots = [text async for text in as_agent(agent).stream(request())]
    finally:
        await agent.aclose()
    assert len(snapshots) > 3
    assert snapshots[-1] == REPLY
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(snapshots))


async def test_streams_as_the_server_sends(server: FakeOpenAIServer) -> None:
    server.delay = 0.05
    server.reply = "one two three"
    agent = make_agent(server)
    arrivals: list[float] = []
    try:
        async for _ in agent.stream(request()):
            arrivals.append(time.monotonic())
    finally:
        await agent.aclose()
    assert len(arrivals) == 3
    assert arrivals[-1] - arrivals[0] >= 0.08  # the first delta did not wait for the last


async def test_skips_role_reasoning_and_empty_chunks(server: FakeOpenAIServer) -> None:
    server.reasoning = "Let me think about parcels..."
    deltas = await collect(
        make_agent(server, extra={"stream_options": {"include_usage": True}}), request()
    )
    assert "".join(deltas) == REPLY
    assert all(deltas)
    assert server.last_request.body["stream_options"] == {"include_usage": True}


async def test_sends_system_prompt_history_and_question_in_order(
    server: FakeOpenAIServer,
) -> None:
    agent = make_agent(server, system_prompt="You are a helpful agent.", temperature=0.2)
    history = (
        Turn(role="user", text="Hi"),
        Turn(role="assistant", text="Hello! How can I help?"),
        Turn(role="system", text="ignored: not a conversation turn"),
        Turn(role="user", text="I ordered a lamp"),
        Turn(role="assistant", text="Great choice."),
    )
    await collect(agent, request("When does it ship?", *history))

    sent = server.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.model == "fake-model"
    assert sent.stream is True
    assert sent.body["temperature"] == 0.2
    assert sent.messages == [
        {"role": "system", "content": "You are a helpful agent."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "I ordered a lamp"},
        {"role": "assistant", "content": "Great choice."},
        {"role": "user", "content": "When does it ship?"},
    ]
    assert sent.authorization == f"Bearer {SECRET}"


async def test_history_is_bounded_to_the_newest_turns(server: FakeOpenAIServer) -> None:
    history = tuple(
        Turn(role="user" if i % 2 == 0 else "assistant", text=f"turn {i}") for i in range(10)
    )
    await collect(make_agent(server, max_history=3), request("now?", *history))
    assert [m["content"] for m in server.last_request.messages] == [
        "turn 7",
        "turn 8",
        "turn 9",
        "now?",
    ]
    await collect(make_agent(server, max_history=0), request("alone", *history))
    assert server.last_request.messages == [{"role": "user", "content": "alone"}]
    assert "temperature" not in server.last_request.body


async def test_extra_body_fields_are_sent(server: FakeOpenAIServer) -> None:
    await collect(make_agent(server, extra={"max_tokens": 50, "top_p": 0.9}), request())
    assert server.last_request.body["max_tokens"] == 50
    assert server.last_request.body["top_p"] == 0.9


async def test_consumer_may_stop_early(server: FakeOpenAIServer) -> None:
    agent = make_agent(server)
    try:
        stream = cast(AsyncGenerator[str, None], agent.stream(request()))
        first = await anext(stream)
        await stream.aclose()
        assert first == REPLY[:5]
        # the agent still works afterwards
        assert "".join([d async for d in agent.stream(request())]) == REPLY
    finally:
        await agent.aclose()


# --- configuration -----------------------------------------------------------------------------


async def test_env_var_fallback(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    agent = OpenAIAgent()
    assert agent.model == "env-model"
    assert agent.base_url == server.base_url
    assert "".join(await collect(agent, request())) == REPLY
    assert server.last_request.model == "env-model"
    assert server.last_request.api_key == "sk-from-env"


async def test_arguments_win_over_env(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    await collect(make_agent(server, model="arg-model"), request())
    assert server.last_request.model == "arg-model"
    assert server.last_request.api_key == SECRET


async def test_local_server_needs_no_key(server: FakeOpenAIServer) -> None:
    agent = OpenAIAgent(model="llama3", base_url=server.base_url)
    assert "".join(await collect(agent, request())) == REPLY
    assert server.last_request.api_key == "not-needed"


def test_missing_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_MODEL"):
        OpenAIAgent(base_url="http://127.0.0.1:1/v1")


def test_missing_key_without_base_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIAgent(model="gpt-4o-mini")


def test_bad_numbers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="timeout"):
        OpenAIAgent(model="m", api_key="k", timeout=0)
    with pytest.raises(ConfigError, match="timeout must be positive, got nan"):
        OpenAIAgent(model="m", api_key="k", timeout=float("nan"))
    with pytest.raises(ConfigError, match="max_history"):
        OpenAIAgent(model="m", api_key="k", max_history=-1)
    for temperature in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="temperature must be 0 or more, got "):
            OpenAIAgent(model="m", api_key="k", temperature=temperature)
    assert OpenAIAgent(model="m", api_key="k", temperature=0)  # greedy decoding is fine


def test_a_base_url_that_is_no_http_url_is_a_config_error_without_its_password() -> None:
    for url, said in (
        ("ftp://models.example/v1", "must be an http:// or https:// URL with a host"),
        ("localhost:11434/v1", "must be an http:// or https:// URL with a host"),
        ("http:///v1", "must be an http:// or https:// URL with a host"),
        ("http://user:hunter2@localhost:99999/v1", "is not a URL ("),
    ):
        with pytest.raises(ConfigError, match=r"^the OpenAI agent's base_url ") as caught:
            OpenAIAgent(model="m", base_url=url)
        assert said in str(caught.value) and "hunter2" not in str(caught.value), url
    agent = OpenAIAgent(model="m", base_url="https://user:hunter2@models.example/v1")
    assert "hunter2" not in repr(agent)


def test_repr_shows_model_and_base_url_but_never_the_key() -> None:
    agent = OpenAIAgent(model="gpt-4o-mini", base_url="http://127.0.0.1:8000/v1", api_key=SECRET)
    assert repr(agent) == "OpenAIAgent(model='gpt-4o-mini', base_url='http://127.0.0.1:8000/v1')"
    assert SECRET not in repr(agent)
    assert SECRET not in str(agent)
    assert SECRET not in f"{agent}"


def test_repr_hides_credentials_in_the_url() -> None:
    agent = OpenAIAgent(model="m", base_url="http://user:hunter2@127.0.0.1:8000/v1")
    assert "hunter2" not in repr(agent)
    assert "127.0.0.1:8000" in repr(agent)


@pytest.mark.parametrize("status", [401, 500])
async def test_api_errors_propagate_without_the_key(
    server: FakeOpenAIServer, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    server.error_status = status  # the fake server echoes the key in its error message
    agent = make_agent(server)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(OpenAIAgentError) as caught:
        await collect(agent, request())
    error = caught.value
    assert error.status == status
    assert str(status) in str(error)
    assert SECRET not in str(error)
    assert SECRET not in repr(error)
    assert error.__cause__ is None
    assert error.__suppress_context__
    assert SECRET not in caplog.text
    assert len(server.requests) == 1  # the server said not to retry


async def test_error_while_streaming_propagates_without_the_key(
    server: FakeOpenAIServer,
) -> None:
    server.fail_after = 2
    agent = make_agent(server)
    deltas: list[str] = []
    with pytest.raises(OpenAIAgentError, match="stream failed"):
        try:
            async for delta in agent.stream(request()):
                deltas.append(delta)
        finally:
            await agent.aclose()
    assert deltas == [REPLY[:5], REPLY[5:10]]


async def test_as_agent_propagates_errors(server: FakeOpenAIServer) -> None:
    server.error_status = 500
    agent = make_agent(server)
    try:
        with pytest.raises(OpenAIAgentError) as caught:
            async for _ in as_agent(agent).stream(request()):
                pass
    finally:
        await agent.aclose()
    assert SECRET not in str(caught.value)


async def test_unreachable_server_is_an_agent_error() -> None:
    async with FakeOpenAIServer() as fake:
        base_url = fake.base_url
    agent = OpenAIAgent(model="m", base_url=base_url, api_key=SECRET, max_retries=0, timeout=5)
    with pytest.raises(OpenAIAgentError) as caught:
        await collect(agent, request())
    assert caught.value.status is None
    assert SECRET not in str(caught.value)


# --- from_settings ------------------------------------------------------------------------------


async def test_from_settings(server: FakeOpenAIServer) -> None:
    agent = OpenAIAgent.from_settings(
        {
            "use": "openai",
            "model": "fake-model",
            "base_url": server.base_url,
            "api_key": SECRET,
            "system_prompt": "Be brief.",
            "temperature": 0,
            "timeout": 10,
            "max_history": 4,
        }
    )
    assert "".join(await collect(agent, request())) == REPLY
    assert server.last_request.messages[0] == {"role": "system", "content": "Be brief."}
    assert server.last_request.body["temperature"] == 0


async def test_api_key_may_be_a_secret(server: FakeOpenAIServer) -> None:
    agent = OpenAIAgent.from_settings(
        {"model": "m", "base_url": server.base_url, "api_key": Secret(SECRET)}
    )
    await collect(agent, request())
    assert server.last_request.api_key == SECRET


def test_from_settings_empty_strings_fall_back_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    agent = OpenAIAgent.from_settings({"model": "m", "api_key": "", "base_url": ""})
    assert agent.base_url is None


def test_from_settings_a_missing_model_or_key_names_the_agent_table() -> None:
    where = "robots.support.agent"
    with pytest.raises(ConfigError, match=rf"^{where}: the OpenAI agent needs an API key: "):
        OpenAIAgent.from_settings({"model": "gpt-4o-mini"}, path=where)
    with pytest.raises(ConfigError, match=rf"^{where}: the OpenAI agent needs a model: "):
        OpenAIAgent.from_settings({"api_key": "k"}, path=where)


def test_from_settings_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^agent: unknown key: modle \(did you mean model\?\)$"):
        OpenAIAgent.from_settings({"modle": "gpt-4o-mini", "api_key": "k"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model", 4),
        ("temperature", "hot"),
        ("temperature", True),
        ("timeout", "60"),
        ("max_history", 2.5),
        ("extra", "max_tokens=5"),
    ],
)
def test_from_settings_wrong_type_is_named(key: str, value: object) -> None:
    settings: dict[str, Any] = {"model": "m", "api_key": "k", key: value}
    with pytest.raises(ConfigError, match=rf"^agent\.{key}: expected "):
        OpenAIAgent.from_settings(settings)


def test_missing_openai_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` fail
    with pytest.raises(ConfigError, match=r'pip install "imrobots\[openai\]"'):
        OpenAIAgent(model="m", api_key="k")


def test_module_imports_without_openai() -> None:
    code = (
        "import sys; sys.modules['openai'] = None\n"
        "import imrobots.openai_agent as m\n"
        "assert m.OpenAIAgent.__name__ == 'OpenAIAgent'\n"
        "assert 'openai' not in [n for n, v in sys.modules.items() if v is not None]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- quoted messages -------------------------------------------------------------------------


def quoting(text: str, quote: Quote) -> AgentRequest:
    message = Message(
        id="m1",
        platform="memory",
        text=text,
        conversation=Conversation(id="c1", kind=ConversationKind.GROUP),
        sender=Sender(id="u1"),
        quote=quote,
    )
    return AgentRequest.from_message(message, (Turn(role="user", text="Hi"),))


async def test_the_quoted_text_goes_into_the_user_turn(server: FakeOpenAIServer) -> None:
    req = quoting("Is this still true?", Quote(id="q1", text="Refunds take 5 days."))
    await collect(make_agent(server), req)
    assert server.last_request.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": 'quoting: "Refunds take 5 days."\n\nIs this still true?'},
    ]


async def test_a_quote_without_text_names_its_attachments(server: FakeOpenAIServer) -> None:
    quote = Quote(attachments=(Attachment(kind="image"), Attachment(kind="file", name="a.pdf")))
    await collect(make_agent(server), quoting("What is this?", quote))
    assert server.last_request.messages[-1] == {
        "role": "user",
        "content": "quoting: [image] [file: a.pdf]\n\nWhat is this?",
    }


async def test_a_long_quote_is_shortened(server: FakeOpenAIServer) -> None:
    quote = Quote(text="x" * 5000)
    await collect(make_agent(server), quoting("Summarise", quote))
    content = server.last_request.messages[-1]["content"]
    assert content.startswith('quoting: "' + "x" * 100)
    assert content.endswith('…"\n\nSummarise')
    assert len(content) < 2100
