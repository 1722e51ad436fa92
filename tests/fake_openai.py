"""A tiny OpenAI-compatible chat-completions server for tests, on 127.0.0.1.

It speaks exactly the wire format the ``openai`` client parses: ``POST
/v1/chat/completions`` answers with a JSON ``chat.completion``, or with ``stream: true``
with server-sent events ``data: {chat.completion.chunk}`` ending in ``data: [DONE]``.
Every request is recorded for assertions::

    async with FakeOpenAIServer(reply="Hello there!", chunk_size=3) as server:
        agent = OpenAIAgent(model="fake-model", base_url=server.base_url, api_key="sk-test")
        ...
        assert server.requests[0].messages[-1] == {"role": "user", "content": "hi"}

The attributes (``reply``, ``chunk_size``, ``delay``, ``error_status``, ...) may be changed
between requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import attrs
from aiohttp import web

__all__ = ["FakeOpenAIServer", "RecordedRequest"]

Reply = str | Callable[["RecordedRequest"], str]


@attrs.frozen
class RecordedRequest:
    """One request the fake server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def model(self) -> str | None:
        model = self.body.get("model")
        return model if isinstance(model, str) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages")
        return list(messages) if isinstance(messages, list) else []

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header as sent."""
        return self.headers.get("Authorization")

    @property
    def api_key(self) -> str | None:
        """The bearer token of the ``Authorization`` header."""
        auth = self.authorization
        if auth and auth.lower().startswith("bearer "):
            return auth[7:]
        return None


class FakeOpenAIServer:
    """An OpenAI-compatible server with a scripted reply.

    :param reply: the answer text, or a function of the request returning it.
    :param chunk_size: characters per streamed content chunk.
    :param delay: seconds to wait before each streamed chunk.
    :param error_status: answer every chat request with this HTTP status and an
        OpenAI-style error body (e.g. 401, 429, 500).
    :param error_message: the error's message; ``{api_key}`` is replaced by the key the
        client sent (a careless server echoing the key, to test it is scrubbed).
    :param retryable: send ``x-should-retry: true`` with errors (else ``false``, so the
        client does not retry and tests stay fast).
    :param fail_after: in a stream, send an ``error`` event after this many content chunks.
    :param reasoning: stream this first as ``reasoning_content`` deltas (as vLLM and
        DeepSeek do), which agents must not show.
    :param require_key: answer 401 unless the client sends this key.
    :param model_name: the model reported in answers; default the requested one.
    """

    def __init__(
        self,
        *,
        reply: Reply = "Hello from the fake OpenAI server!",
        chunk_size: int = 4,
        delay: float = 0.0,
        error_status: int | None = None,
        error_message: str | None = None,
        retryable: bool = False,
        fail_after: int | None = None,
        reasoning: str | None = None,
        require_key: str | None = None,
        model_name: str | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.reply = reply
        self.chunk_size = chunk_size
        self.delay = delay
        self.error_status = error_status
        self.error_message = error_message
        self.retryable = retryable
        self.fail_after = fail_after
        self.reasoning = reasoning
        self.require_key = require_key
        self.model_name = model_name
        self.requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAIServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake OpenAI server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """The API root to give clients: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    # --- handlers ------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        model = self.model_name or "fake-model"
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": "fake"}],
            }
        )

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(400, "the request body must be a JSON object", "invalid_request")
        recorded = RecordedRequest(
            method=request.method, path=request.path, headers=dict(request.headers), body=body
        )
        self.requests.append(recorded)

        if self.require_key is not None and recorded.api_key != self.require_key:
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        if self.error_status is not None:
            template = self.error_message or (
                "Incorrect API key provided: {api_key}."
                if self.error_status == 401
                else "The server had an error processing your request (key {api_key})."
            )
            message = template.replace("{api_key}", recorded.api_key or "")
            return self._error(self.error_status, message, _error_code(self.error_status))
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            return self._error(400, "'model' and 'messages' are required", "invalid_request")

        text = self.reply(recorded) if callable(self.reply) else self.reply
        model = self.model_name or str(body["model"])
        completion_id = f"chatcmpl-fake{next(self._ids)}"
        if recorded.stream:
            return await self._stream(request, recorded, completion_id, model, text)
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(recorded, text),
            }
        )

    async def _stream(
        self,
        request: web.Request,
        recorded: RecordedRequest,
        completion_id: str,
        model: str,
        text: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        created = int(time.time())

        def chunk(
            delta: dict[str, Any], finish_reason: str | None = None, **more: Any
        ) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
                **more,
            }

        async def send(data: dict[str, Any] | str, *, wait: bool = False) -> None:
            if wait and self.delay > 0:
                await asyncio.sleep(self.delay)
            payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
            await response.write(f"data: {payload}\n\n".encode())

        with contextlib.suppress(ConnectionResetError):
            await send(chunk({"role": "assistant", "content": ""}))
            if self.reasoning:
                for piece in _pieces(self.reasoning, self.chunk_size):
                    await send(chunk({"reasoning_content": piece}), wait=True)
            for number, piece in enumerate(_pieces(text, self.chunk_size)):
                if self.fail_after is not None and number >= self.fail_after:
                    await send({"error": {"message": "stream failed", "type": "server_error"}})
                    await response.write_eof()
                    return response
                await send(chunk({"content": piece}), wait=True)
            await send(chunk({}, "stop"))
            options = recorded.body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                await send({**chunk({}), "choices": [], "usage": _usage(recorded, text)})
            await send("[DONE]")
            await response.write_eof()
        return response

    def _error(self, status: int, message: str, code: str) -> web.Response:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return web.json_response(
            {"error": {"message": message, "type": kind, "param": None, "code": code}},
            status=status,
            headers={"x-should-retry": "true" if self.retryable else "false"},
        )


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _error_code(status: int) -> str:
    return {
        400: "invalid_request",
        401: "invalid_api_key",
        403: "permission_denied",
        404: "model_not_found",
        429: "rate_limit_exceeded",
    }.get(status, "server_error")


def _usage(recorded: RecordedRequest, text: str) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in recorded.messages)
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
