"""Robot messages: the ``content`` of text, post, image and file messages, the ``uuid``
that makes a send idempotent, and splitting text by UTF-8 bytes to Feishu's limits.

Feishu counts message sizes in bytes of the request's ``content`` (PROTOCOLS 3.8):
text at most 150 KB, cards and posts at most 30 KB. Markdown answers go as ``post``
messages (one ``md`` element), so they are held to the 30 KB of a post; JSON escaping
(quotes, newlines, backslashes) counts, so the budget is measured on the encoded
content, not on the text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from imrobots.platform import SizeUnit, measure

__all__ = [
    "CONTENT_BYTES",
    "POST_BYTES",
    "TEXT_BYTES",
    "file_content",
    "image_content",
    "post_content",
    "split_bytes",
    "text_content",
    "uuid_for",
]

TEXT_BYTES = 150 * 1024
"""A text message's ``content`` (PROTOCOLS 3.8)."""
POST_BYTES = 30 * 1024
"""A post or card message's ``content`` (PROTOCOLS 3.8)."""
CONTENT_BYTES = 28 * 1024
"""UTF-8 bytes of markdown one message (a ``post``) carries before the text continues in
the next message: 30 KB less room for JSON escaping and @-mentions."""


def uuid_for(key: str) -> str:
    """The ``uuid`` (at most 50 characters, deduplicated by Feishu for an hour) of the
    send made under idempotency ``key``: the key itself when short enough, else a hash."""
    if len(key) <= 50 and key.isascii():
        return key
    return hashlib.sha256(key.encode()).hexdigest()[:50]


def _mention_text(open_id: str) -> str:
    return f'<at user_id="{open_id}"></at>'


def text_content(text: str, mentions: Sequence[str] = ()) -> str:
    """``content`` of a ``text`` message, @-mentioning ``mentions`` (open_ids) first."""
    prefix = " ".join(_mention_text(m) for m in mentions)
    return json.dumps({"text": f"{prefix} {text}" if prefix else text}, ensure_ascii=False)


def post_content(markdown: str, mentions: Sequence[str] = (), title: str = "") -> str:
    """``content`` of a ``post`` message holding ``markdown`` in one ``md`` element, after
    ``at`` elements for ``mentions``."""
    line: list[dict[str, Any]] = [{"tag": "at", "user_id": m} for m in mentions]
    line.append({"tag": "md", "text": markdown})
    return json.dumps({"zh_cn": {"title": title, "content": [line]}}, ensure_ascii=False)


def image_content(image_key: str) -> str:
    return json.dumps({"image_key": image_key})


def file_content(file_key: str) -> str:
    return json.dumps({"file_key": file_key})


def split_bytes(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-8 bytes each, cut at a line break or a
    space where there is one in the second half of a part, never inside a character."""
    if measure(text, SizeUnit.BYTES) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while measure(rest, SizeUnit.BYTES) > limit:
        cut = len(rest.encode()[:limit].decode("utf-8", errors="ignore"))
        for sep in ("\n", " "):
            at = rest.rfind(sep, 0, cut)
            if at > cut // 2:
                cut = at + 1
                break
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        parts.append(rest)
    return parts
