"""An agent backed by any OpenAI-compatible chat-completions API.

Works with the OpenAI API itself and with any server that speaks the same protocol
(vLLM, Ollama, LM Studio, llama.cpp, LiteLLM, ...) by pointing ``base_url`` at it::

    agent = OpenAIAgent(model="gpt-4o-mini", system_prompt="You are a helpful agent.")
    async for delta in agent.stream(request):
        ...

Settings not given fall back to the ``OPENAI_MODEL``, ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY`` environment variables. The ``openai`` package is an optional
dependency (``pip install "imrobots[openai]"``); this module imports without it and
only complains when an agent is created.

The API key is never shown: not in ``repr()``, not in logs, not in error messages.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from .agents import AgentRequest
from .config import structure
from .errors import ConfigError, ImrobotsError
from .secret import Secret

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam

__all__ = ["QUOTE_CHARS", "OpenAIAgent", "OpenAIAgentError", "quoted"]

_LOCAL_API_KEY = "not-needed"
"""Sent as the key when ``base_url`` is set and no key was given: local servers ignore it."""

_INSTALL_HINT = 'the OpenAI agent needs the openai package: pip install "imrobots[openai]"'

_BEARER = re.compile(r"(?i)\bbearer\s+\S+")

QUOTE_CHARS = 2000
"""At most this many characters of a quoted message go into the user's turn."""


def quoted(request: AgentRequest) -> str | None:
    """What the user quoted (replied to), as one line of context for the model:
    ``quoting: "the quoted text"``, or the quoted attachments (``quoting: [image]``);
    ``None`` when the message quotes nothing."""
    message = request.message
    quote = message.quote if message is not None else None
    if quote is None:
        return None
    text = quote.text.strip()
    if len(text) > QUOTE_CHARS:
        text = text[: QUOTE_CHARS - 1] + "…"
    if text:
        return f'quoting: "{text}"'
    parts = [f"[{a.kind}: {a.name}]" if a.name else f"[{a.kind}]" for a in quote.attachments]
    return f"quoting: {' '.join(parts)}" if parts else None


class OpenAIAgentError(ImrobotsError):
    """The chat-completions API call failed.

    Wraps the ``openai`` package's exception with a message scrubbed of the API key.
    ``status`` is the HTTP status when the server answered with an error.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:  # pragma: no cover - exercised only without the optional extra
        raise ConfigError(_INSTALL_HINT) from None
    return openai


def _display_url(url: str | None) -> str | None:
    """``url`` without any user:password part, for repr and messages."""
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:  # (a port out of range raises ValueError)
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<invalid url>"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as an API root, or ``None``."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, e.g. http://localhost:11434/v1"
    return None


@attrs.frozen(kw_only=True)
class OpenAIAgentSettings:
    """The ``[robots.NAME.agent]`` table of ``use = "openai"`` (the constructor's arguments)."""

    model: str | None = None
    base_url: str | None = None
    api_key: Secret | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    timeout: float = 60.0
    max_history: int = 20
    max_retries: int = 2
    extra: dict[str, Any] | None = None


class OpenAIAgent:
    """Answer with an OpenAI-compatible chat-completions model, streaming text deltas.

    Use it directly (``async for delta in agent.stream(request)``) or give it to
    :func:`imrobots.agents.as_agent`, which accumulates the deltas.
    """

    stream_mode: ClassVar[str] = "delta"
    """:meth:`stream` yields deltas, never the accumulated text."""

    def __init__(
        self,
        *,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | Secret | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        timeout: float = 60.0,
        max_history: int = 20,
        max_retries: int = 2,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Create the agent; no network traffic happens until the first :meth:`stream`.

        :param model: the model name; default ``$OPENAI_MODEL``.
        :param base_url: the API root, an ``http://`` or ``https://`` URL, e.g.
            ``http://localhost:11434/v1``; default
            ``$OPENAI_BASE_URL``, else the OpenAI API.
        :param api_key: default ``$OPENAI_API_KEY``; may be omitted when ``base_url`` is set.
            A :class:`~imrobots.secret.Secret` is accepted too.
        :param system_prompt: sent first, as the ``system`` message.
        :param temperature: sampling temperature, 0 or more (OpenAI takes 0-2; other
            servers have their own ceilings); the server's default when ``None``.
        :param timeout: seconds for each API call.
        :param max_history: at most this many earlier turns are sent (the newest ones).
        :param max_retries: how often the client retries a failed call (429, 5xx, network).
        :param extra: more request body fields for the server (``max_tokens``, ``top_p``,
            or a server-specific option), sent as they are.
        :raises ConfigError: no model, no key for the OpenAI API, a bad value, or the
            ``openai`` package is missing.
        """
        self._openai = _import_openai()
        model = model or os.environ.get("OPENAI_MODEL") or None
        if not model:
            raise ConfigError(
                "the OpenAI agent needs a model: set `model` in the agent settings "
                "or the OPENAI_MODEL environment variable"
            )
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if base_url is not None and (problem := _url_problem(base_url)) is not None:
            raise ConfigError(f"the OpenAI agent's base_url {_display_url(base_url)!r} {problem}")
        if temperature is not None and not 0 <= temperature < math.inf:  # nan compares false
            raise ConfigError(
                f"the OpenAI agent's temperature must be 0 or more, got {temperature!r}"
            )
        if isinstance(api_key, Secret):
            api_key = api_key.get()
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        if api_key is None:
            if base_url is None:
                raise ConfigError(
                    "the OpenAI agent needs an API key: set `api_key` in the agent settings "
                    "or the OPENAI_API_KEY environment variable (or set `base_url` to a "
                    "server that needs no key)"
                )
            api_key = _LOCAL_API_KEY
        if not timeout > 0:  # nan too, which compares false
            raise ConfigError(f"the OpenAI agent's timeout must be positive, got {timeout!r}")
        if max_history < 0:
            raise ConfigError(
                f"the OpenAI agent's max_history must be 0 or more, got {max_history!r}"
            )
        if max_retries < 0:
            raise ConfigError(
                f"the OpenAI agent's max_retries must be 0 or more, got {max_retries!r}"
            )
        self._model: str = model
        self._base_url = base_url
        self._api_key = api_key
        self._system_prompt = system_prompt
        self._temperature = temperature
        self._timeout = float(timeout)
        self._max_history = max_history
        self._max_retries = max_retries
        self._extra: dict[str, Any] = dict(extra or {})
        self._client: openai.AsyncOpenAI | None = None

    # --- configuration ----------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, path: str = "agent") -> OpenAIAgent:
        """Create an agent from a config table, e.g. ``[robots.NAME.agent]``.

        Accepts the keyword arguments of the constructor; a ``use`` key (which picked
        this agent) is ignored. Empty strings count as not set, so that an unset
        ``{{OPENAI_API_KEY}}`` placeholder falls back to the environment.

        :raises ConfigError: an unknown key or a value of the wrong type, named by its
            path under ``path``; a missing model or key, or a bad value, after ``path``.
        """
        table = {k: v for k, v in settings.items() if k != "use" and v != ""}
        options = structure(table, OpenAIAgentSettings, path=path)
        try:
            return cls(**attrs.asdict(options, recurse=False))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @property
    def model(self) -> str:
        return self._model

    @property
    def base_url(self) -> str | None:
        """The API root, or ``None`` for the OpenAI API."""
        return self._base_url

    @property
    def system_prompt(self) -> str | None:
        return self._system_prompt

    def __repr__(self) -> str:
        return f"OpenAIAgent(model={self._model!r}, base_url={_display_url(self._base_url)!r})"

    __str__ = __repr__

    # --- answering --------------------------------------------------------------------------

    def messages(self, request: AgentRequest) -> list[ChatCompletionMessageParam]:
        """The chat messages sent for ``request``: system prompt, recent history, question.

        When the user quoted a message, the question's turn starts with it as context
        (``quoting: "..."``, see :func:`quoted`)."""
        messages: list[ChatCompletionMessageParam] = []
        if self._system_prompt:
            messages.append({"role": "system", "content": self._system_prompt})
        turns = [turn for turn in request.history if turn.role in ("user", "assistant")]
        if self._max_history == 0:
            turns = []
        elif len(turns) > self._max_history:
            turns = turns[-self._max_history :]
        for turn in turns:
            if not turn.text:
                continue
            if turn.role == "user":
                messages.append({"role": "user", "content": turn.text})
            else:
                messages.append({"role": "assistant", "content": turn.text})
        context = quoted(request)
        question = f"{context}\n\n{request.text}" if context else request.text
        messages.append({"role": "user", "content": question})
        return messages

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        """Ask the model and yield the answer's text deltas as they arrive.

        Chunks without text (the role announcement, reasoning or tool-call deltas,
        usage) are skipped. API failures raise :class:`OpenAIAgentError`.
        """
        client = self._get_client()
        openai_mod = self._openai
        options: dict[str, Any] = {}
        if self._temperature is not None:
            options["temperature"] = self._temperature
        if self._extra:
            options["extra_body"] = self._extra
        try:
            response = await client.chat.completions.create(
                model=self._model,
                messages=self.messages(request),
                stream=True,
                **options,
            )
            async with response:
                async for chunk in response:
                    for choice in chunk.choices:
                        if choice.index != 0:
                            continue
                        content = choice.delta.content
                        if content:
                            yield content
        except openai_mod.OpenAIError as exc:
            raise self._sanitised_error(exc) from None

    async def aclose(self) -> None:
        """Close the HTTP client. The agent may still be used: a new client is made."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # --- internals ----------------------------------------------------------------------------

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            client: openai.AsyncOpenAI = self._openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=self._timeout,
                max_retries=self._max_retries,
            )
            self._client = client
        return self._client

    def _scrub(self, text: str) -> str:
        if self._api_key and self._api_key != _LOCAL_API_KEY:
            text = text.replace(self._api_key, "***")
        return _BEARER.sub("Bearer ***", text)

    def _sanitised_error(self, exc: BaseException) -> OpenAIAgentError:
        status = getattr(exc, "status_code", None)
        detail = self._scrub(str(exc)) or type(exc).__name__
        where = _display_url(self._base_url) or "the OpenAI API"
        message = f"OpenAI-compatible API call to {where} failed ({type(exc).__name__}): {detail}"
        return OpenAIAgentError(message, status=status if isinstance(status, int) else None)
