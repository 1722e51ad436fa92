"""The built-in demo agent: offline, deterministic answers from a markdown FAQ."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from imrobots import Attachment, Conversation, ConversationKind, Message, Quote, Sender
from imrobots.agents import AgentRequest, as_agent
from imrobots.demo_agent import DemoAgent, parse_faq
from imrobots.errors import ConfigError


def request(text: str) -> AgentRequest:
    return AgentRequest(text=text, conversation_id="c1", sender_id="u1")


async def deltas(agent: DemoAgent, text: str) -> list[str]:
    return [delta async for delta in agent.stream(request(text))]


@pytest.fixture
def agent() -> DemoAgent:
    return DemoAgent(delay=0)


# --- the built-in FAQ --------------------------------------------------------------------------


def test_builtin_faq_has_the_promised_topics(agent: DemoAgent) -> None:
    assert 6 <= len(agent.topics) <= 10
    joined = " ".join(agent.topics).lower()
    for topic in ("refund", "delivery", "password", "invoice", "opening hours", "human"):
        assert topic in joined
    answers = " ".join(entry.answer for entry in agent.faq.entries)
    assert "**" in answers  # bold text
    assert "\n- " in answers  # a list
    assert all("Keywords:" not in entry.answer for entry in agent.faq.entries)


@pytest.mark.parametrize(
    ("question", "topic"),
    [
        ("How do I get a refund?", "refund"),
        ("I want my money back", "refund"),
        ("REFUNDS!!", "refund"),
        ("When will my parcel arrive?", "delivery"),
        ("How long does shipping take", "delivery"),
        ("I forgot my password", "password"),
        ("Can I get an invoice with my VAT number?", "invoice"),
        ("What are your opening hours?", "opening hours"),
        ("Can I talk to a real person?", "human"),
        ("Do you take PayPal?", "payment"),
        ("I need to cancel my order", "cancel"),
        # Chinese keywords
        ("我要退款", "refund"),
        ("发票怎么开？", "invoice"),
        ("我的快递到哪里了", "delivery"),
        ("转人工客服", "human"),
        ("忘记密码了怎么办", "password"),
    ],
)
def test_keyword_matching(agent: DemoAgent, question: str, topic: str) -> None:
    entry = agent.faq.find(question)
    assert entry is not None
    assert topic in entry.question.lower()
    assert agent.answer_for(question) == entry.answer


@pytest.mark.parametrize("question", ["What's the weather like?", "hello", "", "   ", "？"])
def test_fallback_lists_the_topics(agent: DemoAgent, question: str) -> None:
    assert agent.faq.find(question) is None
    answer = agent.answer_for(question)
    assert answer == agent.fallback()
    assert answer.startswith("Sorry")
    for topic in agent.topics:
        assert f"- {topic}" in answer


async def test_answers_are_deterministic() -> None:
    first = await deltas(DemoAgent(delay=0), "How do I get a refund?")
    second = await deltas(DemoAgent(delay=0), "How do I get a refund?")
    assert first == second
    assert "".join(first) == DemoAgent(delay=0).answer_for("How do I get a refund?")
    assert "**within 30 days**" in "".join(first)


async def test_streams_word_by_word(agent: DemoAgent) -> None:
    chunks = await deltas(agent, "refund")
    answer = agent.answer_for("refund")
    assert len(chunks) == len(answer.split())
    assert "".join(chunks) == answer
    assert all(chunk.strip() and len(chunk.split()) == 1 for chunk in chunks)


async def test_chunk_words() -> None:
    agent = DemoAgent(delay=0, chunk_words=3)
    chunks = await deltas(agent, "opening hours")
    answer = agent.answer_for("opening hours")
    assert "".join(chunks) == answer
    assert len(chunks) == -(-len(answer.split()) // 3)
    assert all(len(chunk.split()) == 3 for chunk in chunks[:-1])


async def test_chinese_text_streams_character_by_character(tmp_path: Path) -> None:
    faq = tmp_path / "faq.md"
    faq.write_text(
        "## 如何退款？\n\nKeywords: 退款\n\n请在**30天内**申请退款。\n", encoding="utf-8"
    )
    agent = DemoAgent(delay=0, faq_path=str(faq))
    chunks = await deltas(agent, "退款")
    assert "".join(chunks) == "请在**30天内**申请退款。"
    assert len(chunks) > 5


async def test_as_agent_accumulates(agent: DemoAgent) -> None:
    snapshots = [text async for text in as_agent(agent).stream(request("invoice"))]
    assert len(snapshots) > 5
    assert snapshots[-1] == agent.answer_for("invoice")


async def test_delay_zero_is_fast_and_delay_paces_the_stream() -> None:
    started = time.monotonic()
    for _ in range(20):
        await deltas(DemoAgent(delay=0), "How do I reset my password?")
    assert time.monotonic() - started < 1.0

    paced = DemoAgent(delay=0.01, chunk_words=10)
    started = time.monotonic()
    chunks = await deltas(paced, "refund")
    assert time.monotonic() - started >= 0.01 * (len(chunks) - 1) * 0.9


# --- own FAQ and settings ----------------------------------------------------------------------


CUSTOM_FAQ = """\
# Widget Corp helpdesk

Anything here, before the first question, is ignored.

## How do I reboot the widget?

Keywords: restart, power cycle, 重启

Hold the **power** button for 10 seconds.

## Where is the manual?

- Online at *example.com/manual*
- In the box

```
## not a heading: inside a code block
```
"""


def test_own_faq_file(tmp_path: Path) -> None:
    path = tmp_path / "faq.md"
    path.write_text(CUSTOM_FAQ, encoding="utf-8")
    agent = DemoAgent(delay=0, faq_path=str(path))
    assert agent.topics == ("How do I reboot the widget?", "Where is the manual?")
    assert agent.answer_for("please restart it") == "Hold the **power** button for 10 seconds."
    assert agent.answer_for("how to power cycle") == "Hold the **power** button for 10 seconds."
    assert agent.answer_for("怎么重启") == "Hold the **power** button for 10 seconds."
    assert agent.answer_for("the manual").startswith("- Online")
    assert "## not a heading" in agent.answer_for("manual")
    assert "Widget Corp helpdesk" in agent.answer_for("something else")


def test_parse_faq_rejects_text_without_sections() -> None:
    with pytest.raises(ConfigError, match="no '## Question' sections"):
        parse_faq("# Title\n\nJust text.\n")


def test_missing_faq_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        DemoAgent(faq_path=str(tmp_path / "missing.md"))


def test_from_settings(tmp_path: Path) -> None:
    path = tmp_path / "faq.md"
    path.write_text(CUSTOM_FAQ, encoding="utf-8")
    agent = DemoAgent.from_settings(
        {"use": "demo", "delay": 0, "chunk_words": 2, "faq_path": str(path)}
    )
    assert agent.topics[0] == "How do I reboot the widget?"
    assert agent.chunks("one two three") == ["one two ", "three"]
    assert isinstance(DemoAgent.from_settings({}), DemoAgent)


def test_from_settings_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^agent: unknown key: speed$"):
        DemoAgent.from_settings({"speed": 2})


@pytest.mark.parametrize(
    ("key", "value"),
    [("delay", "fast"), ("delay", True), ("chunk_words", 1.5), ("faq_path", 3)],
)
def test_from_settings_wrong_type_is_named(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^robots\.x\.agent\.{key}: expected "):
        DemoAgent.from_settings({key: value}, path="robots.x.agent")


def test_from_settings_a_bad_value_or_unreadable_faq_names_the_agent_table(
    tmp_path: Path,
) -> None:
    where = "robots.x.agent"
    missing = str(tmp_path / "missing.md")
    with pytest.raises(ConfigError, match=rf"^{where}: the demo agent cannot read its FAQ "):
        DemoAgent.from_settings({"faq_path": missing}, path=where)
    with pytest.raises(ConfigError, match=rf"^{where}: the demo agent's delay must be "):
        DemoAgent.from_settings({"delay": -1}, path=where)


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), float("-inf")])
def test_a_negative_or_non_finite_delay_is_a_config_error(delay: float) -> None:
    """nan would act as 0 and inf would never stream: refused as a negative delay is."""
    with pytest.raises(ConfigError, match=r"^the demo agent's delay must be a finite number"):
        DemoAgent(delay=delay)


def test_a_non_finite_delay_in_a_config_table_is_refused() -> None:
    """TOML has nan and inf literals: the config's delay is checked as the option is."""
    with pytest.raises(ConfigError, match="delay must be a finite number"):
        DemoAgent.from_settings({"delay": float("nan")})


def test_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="chunk_words"):
        DemoAgent(chunk_words=0)


# --- quoted messages ---------------------------------------------------------------------------


def quoting(text: str, quoted: str, *attachments: Attachment) -> AgentRequest:
    """A request whose message quotes (replies to) another message."""
    message = Message(
        id="m1",
        platform="memory",
        text=text,
        conversation=Conversation(id="c1", kind=ConversationKind.GROUP),
        sender=Sender(id="u1"),
        quote=Quote(id="q1", text=quoted, attachments=attachments),
    )
    return AgentRequest.from_message(message)


async def test_the_quote_is_context_when_the_question_alone_finds_nothing(
    agent: DemoAgent,
) -> None:
    """'What about this?' quoting a refund question: the refund answer, not the fallback."""
    req = quoting("What about this?", "How do I get a refund?")
    assert agent.faq.find(req.text) is None
    answer = "".join([delta async for delta in agent.stream(req)])
    refund = agent.faq.find("refund")
    assert refund is not None and answer == refund.answer


async def test_the_question_outweighs_the_quote(agent: DemoAgent) -> None:
    req = quoting("and the invoice for it?", "How do I get a refund?")
    answer = "".join([delta async for delta in agent.stream(req)])
    invoice = agent.faq.find("invoice")
    assert invoice is not None and answer == invoice.answer


async def test_a_request_without_a_quote_is_unchanged(agent: DemoAgent) -> None:
    answer = "".join([delta async for delta in agent.stream(request("What about this?"))])
    assert answer == agent.fallback()
