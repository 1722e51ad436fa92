"""The built-in demo agent: answers from a small markdown FAQ, offline and deterministic.

``imrobots demo`` uses it so that a robot can be tried without any model or API key.
It ships with the FAQ of a fictional shop (``imrobots/data/demo_faq.md``); point
``faq_path`` at your own markdown file to make it answer your questions instead.

The FAQ format: every ``## `` heading is a question, the text under it the answer
(any markdown). An optional ``Keywords:`` line right under the heading lists more
words or phrases that should find the section, in any language, comma separated::

    ## How do I get a refund?

    Keywords: refund, money back, 退款

    You can ask for a refund **within 30 days** ...

A question is matched to the section sharing the most (normalised) words with its
heading and keywords; keywords in scripts without spaces between words (Chinese,
Japanese) are matched as substrings. When the user quoted (replied to) a message, its
text counts too, half as much as the question's: "What about this?" quoting a refund
question gets the refund answer. The answer streams word by word.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import math
import re
import unicodedata
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from .agents import AgentRequest
from .config import structure
from .errors import ConfigError

__all__ = ["DemoAgent", "Faq", "FaqEntry", "parse_faq"]

_DEFAULT_FAQ = ("data", "demo_faq.md")

_STOPWORD_TEXT = """
    a about am an and any are as at be been but by can could did do does doing for from get
    got had has have hello hey hi how i if in into is it its just know let like me my need no
    not of on or our please so some tell than thank thanks that the their them then there
    these they this to us want was we what when where which who why will with would yes you
    your
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_WORD = re.compile(r"[^\W_]+")
_HEADING = re.compile(r"^##\s+(.+?)\s*#*\s*$")
_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$")
_KEYWORDS = re.compile(r"^keywords\s*:\s*(.*)$", re.IGNORECASE)
_SPACELESS = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
"""Chinese and Japanese characters and punctuation: scripts written without spaces."""
_SPACELESS_CHAR = re.compile(f"[{_SPACELESS}]")
_CHUNK = re.compile(f"\\s*(?:[{_SPACELESS}]|[^\\s{_SPACELESS}]+)\\s*")
"""A streamed "word": a run of non-space characters, or one Chinese/Japanese character."""

# Scores: a question word found among a section's keywords counts more than one only
# found in its heading; a phrase keyword or a substring keyword counts per character.
_KEYWORD_SCORE = 3
_TITLE_SCORE = 1
_PHRASE_SCORE = 2


def _stem(word: str) -> str:
    """A crude, deterministic stemmer: good enough to match *refunds* with *refund*."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith("ss"):
                break
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2]:
        word = word[:-1]
    return word


def _words(text: str) -> list[str]:
    """Normalised words of ``text``: NFKC, case-folded, stemmed; Chinese/Japanese dropped."""
    text = _SPACELESS_CHAR.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    return [_stem(word) for word in _WORD.findall(text)]


@attrs.frozen
class FaqEntry:
    """One section of the FAQ."""

    question: str
    """The section's heading."""
    answer: str
    """The markdown under the heading, without the ``Keywords:`` line."""
    keywords: tuple[str, ...] = ()
    _title_words: frozenset[str] = attrs.field(init=False, repr=False, eq=False)
    _keyword_words: frozenset[str] = attrs.field(init=False, repr=False, eq=False)
    _phrases: tuple[tuple[str, ...], ...] = attrs.field(init=False, repr=False, eq=False)
    _substrings: tuple[str, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        title = frozenset(_words(self.question)) - _STOPWORDS
        words: set[str] = set()
        phrases: list[tuple[str, ...]] = []
        substrings: list[str] = []
        for keyword in self.keywords:
            folded = unicodedata.normalize("NFKC", keyword).casefold().strip()
            if _SPACELESS_CHAR.search(folded):
                substrings.append(folded)
                continue
            parts = tuple(_words(folded))
            if len(parts) == 1:
                words.add(parts[0])
            elif parts:
                phrases.append(parts)
        object.__setattr__(self, "_title_words", title)
        object.__setattr__(self, "_keyword_words", frozenset(words) - _STOPWORDS)
        object.__setattr__(self, "_phrases", tuple(phrases))
        object.__setattr__(self, "_substrings", tuple(substrings))

    def score(self, question: str) -> int:
        """How well ``question`` matches this section; 0 means not at all."""
        folded = unicodedata.normalize("NFKC", question).casefold()
        sequence = _words(folded)
        score = 0
        for word in set(sequence) - _STOPWORDS:
            if word in self._keyword_words:
                score += _KEYWORD_SCORE
            elif word in self._title_words:
                score += _TITLE_SCORE
        for phrase in self._phrases:
            size = len(phrase)
            if any(
                tuple(sequence[i : i + size]) == phrase for i in range(len(sequence) - size + 1)
            ):
                score += _PHRASE_SCORE * size
        for substring in self._substrings:
            if substring in folded:
                score += _PHRASE_SCORE * len(substring)
        return score


@attrs.frozen
class Faq:
    """A parsed FAQ: its ``# `` title, if any, and its sections in file order."""

    title: str | None
    entries: tuple[FaqEntry, ...]

    def find(self, question: str, context: str = "") -> FaqEntry | None:
        """The best matching section; the first one wins a tie; ``None`` if none matches.

        ``context`` (what the user quoted) counts too, half as much as the question: it
        fills in when the question alone finds nothing ("What about this?") and breaks
        ties, but a question that names its topic keeps it.
        """
        best: FaqEntry | None = None
        best_score = 0
        for entry in self.entries:
            score = 2 * entry.score(question) + (entry.score(context) if context else 0)
            if score > best_score:
                best, best_score = entry, score
        return best


def parse_faq(markdown: str) -> Faq:
    """Parse FAQ markdown (see the module docstring). Text before the first ``## `` is ignored.

    :raises ConfigError: the text has no ``## `` section.
    """
    title: str | None = None
    entries: list[FaqEntry] = []
    heading: str | None = None
    keywords: list[str] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        if heading is not None:
            entries.append(FaqEntry(heading, "\n".join(body).strip(), tuple(keywords)))

    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            in_fence = not in_fence
        if not in_fence and (match := _HEADING.match(line)):
            flush()
            heading, keywords, body = match.group(1), [], []
            continue
        if heading is None:
            if title is None and not in_fence and (match := _TITLE.match(line)):
                title = match.group(1)
            continue
        at_top = not any(body_line.strip() for body_line in body)
        if not in_fence and at_top and (match := _KEYWORDS.match(stripped)):
            keywords.extend(k.strip() for k in match.group(1).split(",") if k.strip())
            continue
        body.append(line.rstrip())
    flush()
    if not entries:
        raise ConfigError("the demo agent's FAQ has no '## Question' sections")
    return Faq(title, tuple(entries))


def _load_default_faq() -> str:
    resource = importlib.resources.files("imrobots")
    for part in _DEFAULT_FAQ:
        resource = resource / part
    return resource.read_text(encoding="utf-8")


@attrs.frozen(kw_only=True)
class DemoAgentSettings:
    """The ``[robots.NAME.agent]`` table of ``use = "demo"``."""

    delay: float = 0.05
    """Seconds between streamed chunks (0 for tests)."""
    chunk_words: int = 1
    """Words per streamed chunk."""
    faq_path: str | None = None
    """A markdown FAQ to answer from instead of the built-in one."""


class DemoAgent:
    """Answers questions from a markdown FAQ, streaming the answer word by word.

    Give it to :func:`imrobots.agents.as_agent`, or iterate :meth:`stream` for deltas.
    """

    stream_mode: ClassVar[str] = "delta"
    """:meth:`stream` yields deltas, never the accumulated text."""

    def __init__(
        self, *, delay: float = 0.05, chunk_words: int = 1, faq_path: str | None = None
    ) -> None:
        """
        :param delay: seconds between streamed chunks, to look like a model typing
            (0 for tests).
        :param chunk_words: words per streamed chunk.
        :param faq_path: a markdown FAQ file to answer from instead of the built-in one.
        :raises ConfigError: a bad value (a ``delay`` below 0, ``nan`` or infinite), or the
            FAQ cannot be read or has no sections.
        """
        if not math.isfinite(delay) or delay < 0:  # nan would act as 0, inf never stream
            raise ConfigError(
                f"the demo agent's delay must be a finite number of seconds, 0 or more, "
                f"got {delay!r}"
            )
        if chunk_words < 1:
            raise ConfigError(
                f"the demo agent's chunk_words must be 1 or more, got {chunk_words!r}"
            )
        self._delay = float(delay)
        self._chunk_words = chunk_words
        self._faq_path = faq_path
        if faq_path is None:
            markdown = _load_default_faq()
        else:
            try:
                markdown = Path(faq_path).expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"the demo agent cannot read its FAQ {faq_path!r}: {exc.__class__.__name__}: "
                    f"{getattr(exc, 'strerror', None) or exc}"
                ) from None
        self._faq = parse_faq(markdown)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, path: str = "agent") -> DemoAgent:
        """Create the agent from a config table (``delay``, ``chunk_words``, ``faq_path``).

        A ``use`` key (which picked this agent) is ignored.

        :raises ConfigError: an unknown key or a value of the wrong type, named by its
            path under ``path``; a bad value or an FAQ that cannot be read, after ``path``.
        """
        table = {k: v for k, v in settings.items() if k != "use"}
        options = structure(table, DemoAgentSettings, path=path)
        try:
            return cls(
                delay=options.delay, chunk_words=options.chunk_words, faq_path=options.faq_path
            )
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @property
    def faq(self) -> Faq:
        return self._faq

    @property
    def topics(self) -> tuple[str, ...]:
        """The questions the FAQ answers, in file order."""
        return tuple(entry.question for entry in self._faq.entries)

    def __repr__(self) -> str:
        source = self._faq_path or "built-in FAQ"
        return (
            f"DemoAgent(faq={source!r}, delay={self._delay!r}, chunk_words={self._chunk_words!r})"
        )

    def answer_for(self, question: str, context: str = "") -> str:
        """The whole answer to ``question`` (in the ``context`` of a quoted message): the
        best FAQ section, else the fallback."""
        entry = self._faq.find(question, context)
        return entry.answer if entry is not None else self.fallback()

    def fallback(self) -> str:
        """The answer when no section matches: what the agent can talk about."""
        about = f" from *{self._faq.title}*" if self._faq.title else ""
        topics = "\n".join(f"- {topic}" for topic in self.topics)
        return (
            f"Sorry, I don't have an answer to that yet. I'm a demo agent answering{about}, "
            f"and I can help with:\n\n{topics}\n\nTry asking about one of these!"
        )

    def chunks(self, text: str) -> list[str]:
        """``text`` cut into the deltas :meth:`stream` yields; they join back to ``text``."""
        words = _CHUNK.findall(text)
        size = self._chunk_words
        return ["".join(words[i : i + size]) for i in range(0, len(words), size)]

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        """Yield the answer to ``request.text`` in chunks of ``chunk_words`` words. The
        message the user quoted, if any, is context (see :meth:`Faq.find`)."""
        message = request.message
        quote = message.quote if message is not None else None
        context = quote.text if quote is not None else ""
        for number, chunk in enumerate(self.chunks(self.answer_for(request.text, context))):
            if number and self._delay > 0:
                await asyncio.sleep(self._delay)
            yield chunk
