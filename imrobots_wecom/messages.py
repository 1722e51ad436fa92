"""Outbound message bodies and WeCom's byte limits.

WeCom counts sizes in UTF-8 bytes (PROTOCOLS 4c/4e): a stream reply or a robot
markdown message holds 20,480 bytes (longer content is truncated by WeCom), an app's
``message/send`` markdown 2,048 bytes. Chinese text is three bytes a character.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APP_MARKDOWN_BYTES",
    "ROBOT_TEXT_BYTES",
    "app_markdown",
    "markdown_body",
    "split_bytes",
]

ROBOT_TEXT_BYTES = 20480
APP_MARKDOWN_BYTES = 2048


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


def markdown_body(chatid: str, text: str) -> dict[str, Any]:
    """An ``aibot_send_msg`` markdown body."""
    return {"chatid": chatid, "msgtype": "markdown", "markdown": {"content": text}}


def app_markdown(agent_id: int, text: str, **to: str) -> dict[str, Any]:
    """A ``message/send`` markdown body to ``touser``/``toparty``/``totag``."""
    return {
        **{k: v for k, v in to.items() if v},
        "agentid": agent_id,
        "msgtype": "markdown",
        "markdown": {"content": text},
        "enable_duplicate_check": 0,
    }
