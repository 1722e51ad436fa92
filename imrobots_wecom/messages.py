"""Outbound message bodies and WeCom's byte limits.

WeCom counts sizes in UTF-8 bytes (PROTOCOLS 4c/4e): a stream reply or a robot
markdown message holds 20,480 bytes (longer content is truncated by WeCom), an app's
``message/send`` markdown 2,048 bytes. Chinese text is three bytes a character.

Media (images and files the robot sends) are uploaded first and sent by ``media_id``:

- robot mode: the chunked upload over the long connection (PROTOCOLS 4c,
  ``wecom_aibot_sdk/client.py`` ``upload_media``): ``aibot_upload_media_init`` (type,
  filename, total_size, total_chunks, md5) -> ``upload_id``; ``aibot_upload_media_chunk``
  (chunk_index, base64 of at most 512 KB) for each chunk, at most 100 chunks;
  ``aibot_upload_media_finish`` -> ``media_id``.
- app mode: ``POST /cgi-bin/media/upload?type=`` (multipart field ``media``), as
  wechatpy's ``WeChatMedia.upload`` does (WeCom doc path/90253).

Size caps: :data:`MAX_IMAGE_BYTES` (10 MB) and :data:`MAX_FILE_BYTES` (20 MB) are WeCom's
documented caps of temporary media (path/90253, the doc wechatpy cites); that the
long connection's upload applies the same caps is UNCONFIRMED (its transport allows
100 chunks of 512 KB, about 50 MB; third-party plugins report 10 MB images and 20 MB
files there too).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APP_MARKDOWN_BYTES",
    "MAX_FILE_BYTES",
    "MAX_IMAGE_BYTES",
    "MEDIA_CHUNK_BYTES",
    "MEDIA_MAX_CHUNKS",
    "ROBOT_TEXT_BYTES",
    "app_body",
    "app_markdown",
    "chunks",
    "markdown_body",
    "split_bytes",
]

ROBOT_TEXT_BYTES = 20480
APP_MARKDOWN_BYTES = 2048
MEDIA_CHUNK_BYTES = 512 * 1024
"""Bytes of one ``aibot_upload_media_chunk`` before base64 (PROTOCOLS 4c)."""
MEDIA_MAX_CHUNKS = 100
"""Chunks one upload may have (PROTOCOLS 4c)."""
MAX_IMAGE_BYTES = 10 * 1024 * 1024
"""Largest image (WeCom doc path/90253; on the long connection UNCONFIRMED)."""
MAX_FILE_BYTES = 20 * 1024 * 1024
"""Largest file (WeCom doc path/90253; on the long connection UNCONFIRMED)."""


def split_bytes(text: str, limit: int) -> list[str]:
    """``text`` in parts of at most ``limit`` UTF-8 bytes, cut at a line or word when
    possible, never inside a character."""
    parts: list[str] = []
    while len(text.encode("utf-8")) > limit:
        window = text.encode("utf-8")[:limit].decode("utf-8", "ignore")
        cut = len(window)
        for separator in ("\n\n", "\n", " "):
            at = window.rfind(separator)
            if at > len(window) // 2:
                cut = at
                break
        parts.append(text[:cut])
        text = text[cut:].lstrip("\n ") if cut < len(window) else text[cut:]
    parts.append(text)
    return parts


def chunks(data: bytes, size: int = MEDIA_CHUNK_BYTES) -> list[bytes]:
    """``data`` in upload chunks of at most ``size`` bytes (one empty chunk for no data)."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def markdown_body(chatid: str, text: str) -> dict[str, Any]:
    """An ``aibot_send_msg`` markdown body."""
    return {"chatid": chatid, "msgtype": "markdown", "markdown": {"content": text}}


def app_markdown(agent_id: int, text: str, **to: str) -> dict[str, Any]:
    """A ``message/send`` markdown body to ``touser``/``toparty``/``totag``."""
    return app_body(agent_id, "markdown", {"content": text}, **to)


def app_body(agent_id: int, msgtype: str, part: dict[str, Any], **to: str) -> dict[str, Any]:
    """A ``message/send`` body of ``msgtype`` (``markdown``, ``image``, ``file``) to
    ``touser``/``toparty``/``totag``."""
    return {
        **{k: v for k, v in to.items() if v},
        "agentid": agent_id,
        "msgtype": msgtype,
        msgtype: part,
        "enable_duplicate_check": 0,
    }
