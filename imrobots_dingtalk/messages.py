"""Robot messages: the bodies of sessionWebhook replies and of the robot message APIs,
and splitting text by UTF-8 bytes to DingTalk's limits.

DingTalk counts message sizes in bytes (PROTOCOLS 2.6): a sessionWebhook post whose
text is over 20,000 bytes is refused with ``460101 "message too long, exceed 20000
bytes"``, and the robot message APIs (``groupMessages/send``,
``oToMessages/batchSend``) take a ``msgParam`` of at most 15,000 bytes. Chinese text
is three bytes a character, so a limit in characters would be wrong by three times.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = [
    "ROBOT_PARAM_BYTES",
    "WEBHOOK_TEXT_BYTES",
    "file_param",
    "fit_param",
    "image_param",
    "markdown_title",
    "split_bytes",
    "text_param",
    "utf8_size",
    "webhook_body",
]

WEBHOOK_TEXT_BYTES = 20_000
"""Most bytes of text one sessionWebhook message carries: ``460101 "message too long,
exceed 20000 bytes"`` (timonwong/prometheus-webhook-dingtalk#30, a webhook robot;
PROTOCOLS 2.6). Counted on the text (``text.content`` / ``markdown.text``).
UNCONFIRMED: whether DingTalk counts the text or the whole JSON body."""

ROBOT_PARAM_BYTES = 15_000
"""Most bytes of ``msgParam`` (a JSON string) of the robot message APIs
[DT-doc the-robot-sends-a-group-message], PROTOCOLS 2.6."""

_TITLE_CHARS = 40


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8."""
    return len(text.encode("utf-8"))


def split_bytes(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-8 bytes, in order.

    Each cut falls at a paragraph, line or word boundary in the second half of the
    window when there is one, and never inside a character; the newlines at a cut
    are dropped (so the parts joined with newlines read as the text).
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    parts: list[str] = []
    while utf8_size(text) > limit:
        window = text.encode("utf-8")[:limit].decode("utf-8", "ignore")
        size = len(window)
        cut = 0
        for separator in ("\n\n", "\n", " "):
            found = window.rfind(separator)
            if found > size // 2:
                cut = found
                break
        if cut == 0:
            cut = max(size, 1)  # no boundary: cut at the limit (one character at least)
        parts.append(text[:cut])
        text = text[cut:].lstrip("\n")
    parts.append(text)
    return parts


def fit_param(text: str, param: Callable[[str], dict[str, Any]], limit: int) -> list[str]:
    """Split ``text`` so that ``json.dumps(param(part))`` of each part is at most ``limit``
    bytes (escaping and the envelope included)."""
    overhead = utf8_size(json.dumps(param(""), ensure_ascii=False))
    queue = split_bytes(text, max(1, limit - overhead))
    parts: list[str] = []
    while queue:
        part = queue.pop(0)
        size = utf8_size(json.dumps(param(part), ensure_ascii=False))
        if size <= limit or len(part) <= 1:
            parts.append(part)
            continue
        # escaping (quotes, backslashes, control characters) made it bigger: halve it
        queue[0:0] = split_bytes(part, max(1, utf8_size(part) // 2))
    return parts


def markdown_title(text: str) -> str:
    """The ``title`` of a markdown message (shown in notifications): its first line."""
    stripped = text.strip()
    if not stripped:
        return "reply"
    first = stripped.splitlines()[0].lstrip("#> ").strip()
    return first[:_TITLE_CHARS] or "reply"


def webhook_body(text: str, *, markdown: bool, at_user_ids: list[str]) -> dict[str, Any]:
    """A sessionWebhook post (PROTOCOLS 2.6): text or markdown, @-mentioning staff ids."""
    body: dict[str, Any]
    if markdown:
        body = {"msgtype": "markdown", "markdown": {"title": markdown_title(text), "text": text}}
    else:
        body = {"msgtype": "text", "text": {"content": text}}
    body["at"] = {"atUserIds": list(at_user_ids), "isAtAll": False}
    return body


def text_param(text: str, *, markdown: bool) -> tuple[str, dict[str, Any]]:
    """``msgKey`` and ``msgParam`` (as a dict) of a text or markdown robot message."""
    if markdown:
        return "sampleMarkdown", {"title": markdown_title(text), "text": text}
    return "sampleText", {"content": text}


def image_param(media_id: str) -> tuple[str, dict[str, Any]]:
    """``sampleImageMsg``: ``photoURL`` takes an uploaded ``media_id`` (or a URL)."""
    return "sampleImageMsg", {"photoURL": media_id}


def file_param(media_id: str, name: str) -> tuple[str, dict[str, Any]]:
    """``sampleFile``: the uploaded ``mediaId``, the file name and its type (extension)."""
    extension = name.rsplit(".", 1)[1].lower() if "." in name.strip(".") else "file"
    return "sampleFile", {"mediaId": media_id, "fileName": name, "fileType": extension}
