"""The WeCom emulator seen through the core's emulator contract.

This is what ``imrobots demo``, ``imrobots emulate wecom``, the web console,
``imrobots.testing`` and the conformance suite use: one emulated WeCom hosting one
robot, in ``robot`` mode (an intelligent robot on the long connection; the robot is
pointed at it by :meth:`WeComConsoleAdapter.robot_settings`) or ``app`` mode (a
self-built app; :meth:`WeComConsoleAdapter.create_platform` builds the platform so the
emulator learns its callback endpoint once it listens).

Card views: a stream reply is a card (``thinking`` until its first update, then
``streaming``, and once finished ``final``, or ``error``/``interrupted`` by the core's
wording); a template card is a card showing its ``sub_title_text`` and buttons (in app
mode, once pressed and answered with ``button.replace_name``, the replacement text as a
note and no buttons). Markdown sends are messages.

App mode: a self-built app has one chat per member (it gets no group messages), so what a
user says in any console conversation reaches the app as that member's message, and what
the app sends the member shows in the conversation the member spoke in last
(:attr:`one_chat_per_user`). Attachments go in as image/voice/video/file callbacks whose
``MediaId`` the robot fetches with ``media/get``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Literal

import attrs

import imrobots
from imrobots.platform import Platform, Secret

from .emulator import WeComEmulator

__all__ = ["WeComConsoleAdapter"]

View = dict[str, Any]

_INTERRUPTED = "(answer interrupted)"
_ERROR_MARKS = ("went wrong while answering", "the answer took too long")
_KINDS = {"image": "image", "file": "file", "audio": "voice", "video": "video"}


def _status(card: dict[str, Any]) -> str:
    text = str(card.get("content") or "")
    template = card.get("template") or {}
    text = text or str(template.get("sub_title_text") or "")
    if not card.get("finished"):
        return "thinking" if card.get("updates", 0) == 0 else "streaming"
    if _INTERRUPTED in text:
        return "interrupted"
    if any(mark in text for mark in _ERROR_MARKS):
        return "error"
    return "final"


_MEMBER_LIMITS: dict[str, float] = {
    "member_per_minute": 30,
    "member_per_hour": 1000,
    "member_minute": 60.0,
    "member_hour": 3600.0,
}
"""WeCom's per-member limits in app mode, as the emulator and the settings default them."""


class WeComConsoleAdapter(imrobots.EmulatorAdapter):
    """One WeCom emulator hosting one robot, for the console and tests."""

    platform = "wecom"
    title = "WeCom"

    def __init__(
        self,
        *,
        port: int = 0,
        mode: Literal["robot", "app"] = "robot",
        bot_id: str = "wecom-emulator-bot",
        corp_id: str = "wwemulatorcorp",
        client_secret: str | None = None,
        **emulator_options: Any,
    ) -> None:
        """``client_secret`` is the robot's Secret (and the app's), so that a printed
        config stays valid across restarts (``imrobots emulate wecom --client-secret``);
        by default a new random one."""
        super().__init__()
        self.emulator = WeComEmulator(port=port, **emulator_options)
        self.mode = mode
        self.bot_id = bot_id
        self.corp_id = corp_id
        self._secret = client_secret or secrets.token_urlsafe(24)
        self.emulator.add_bot(bot_id, self._secret)
        self.app = self.emulator.add_app(corp_id, client_secret or secrets.token_urlsafe(24))
        self._limits: dict[str, Any] = {}
        self._cards: dict[str, View] = {}
        self._calls: list[View] = []
        self._platforms: list[Any] = []
        self._direct: dict[str, str] = {}
        """user id -> the name the caller gave that user's one-to-one chat."""
        self.one_chat_per_user = mode == "app"
        self.emulator.on_change(self._on_event)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self.emulator.start()

    async def stop(self) -> None:
        await self.emulator.stop()

    @property
    def base_url(self) -> str | None:
        return self.emulator.base_url

    def configure(
        self,
        *,
        max_text: int | None = None,
        max_message_text: int | None = None,
        stream_lifetime: float | None = None,
    ) -> None:
        if max_text is not None:
            self.emulator.max_stream_bytes = max_text
            self._limits["max_text"] = max_text
        if max_message_text is not None:
            self.emulator.max_markdown_bytes = max_message_text
            self.emulator.app_markdown_bytes = max_message_text
            self._limits["max_message_text"] = max_message_text
        if stream_lifetime is not None:
            self.emulator.stream_lifetime = stream_lifetime
            self._limits["stream_lifetime"] = stream_lifetime
            self._limits["keep_alive"] = stream_lifetime / 3

    def robot_settings(self) -> dict[str, Any]:
        if self.mode == "robot":
            return {
                "mode": "robot",
                "bot_id": self.bot_id,
                "secret": self._secret,
                "ws_url": self.emulator.ws_url,
                "download_hosts": [f"127.0.0.1:{self.emulator.port}"],
                **self._limits,
            }
        limits = {k: v for k, v in self._limits.items() if k in ("max_text", "max_message_text")}
        # The emulator's per-member limits, when a test changed them (WeCom's by default).
        for name, default in _MEMBER_LIMITS.items():
            value = getattr(self.emulator, name)
            if value != default:
                limits[name] = value
        return {
            "mode": "app",
            "corp_id": self.corp_id,
            "corp_secret": self.app.secret,
            "agent_id": self.app.agent_id,
            "token": self.app.token,
            "encoding_aes_key": self.app.encoding_aes_key,
            "api_endpoint": self.emulator.base_url,
            "callback_port": 0,
            # A card without buttons is a text_notice, which WeCom requires to link
            # somewhere (card_url); the emulator's address stands in for the company's.
            "card_url": f"{self.emulator.base_url}/",
            **limits,
        }

    def create_platform(self, **overrides: Any) -> Platform | None:
        """The robot's platform on this emulator; ``overrides`` change settings (tests:
        e.g. ``card_url=None``)."""
        from .platform import WeComPlatform, WeComSettings

        secrets_ = ("secret", "corp_secret", "token", "encoding_aes_key")
        values: dict[str, Any] = {
            k: Secret(v) if k in secrets_ else tuple(v) if isinstance(v, list) else v
            for k, v in {**self.robot_settings(), **overrides}.items()
        }
        platform = WeComPlatform(WeComSettings(**values))
        self._platforms.append(platform)
        return platform

    def _callback_url(self) -> str:
        for platform in reversed(self._platforms):
            if platform.callback_url:
                self.app.callback_url = platform.callback_url
                return str(platform.callback_url)
        if self.app.callback_url:
            return self.app.callback_url
        raise RuntimeError("no WeCom app robot is listening for callbacks yet")

    # ---------------------------------------------------------------- events
    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "call":
            call = dict(event["call"])
            call.pop("who", None)
            self._calls.append(call)
            self.emit({"type": "call", "call": call})
        elif kind == "card":
            view = self._card_view(event["card"])
            self._cards[view["id"]] = view
            self.emit({"type": "card", "card": self._public(view)})
        elif kind == "message":
            message = event["message"]
            self.record_message(
                self._direct.get(message["conversation_id"], message["conversation_id"]),
                "robot",
                "Robot",
                message["text"],
                from_robot=True,
                receivers=message.get("receivers") or (),
            )
        elif kind == "upload":
            upload = event["upload"]
            self.record_upload(
                self._direct.get(upload["conversation_id"], upload["conversation_id"]),
                upload["kind"],
                upload["name"],
                upload["size"],
            )
        elif kind == "connection":
            self.emit({"type": "connection", "connection": {"event": event.get("event")}})

    def _card_view(self, card: dict[str, Any]) -> View:
        template = card.get("template") or {}
        text = str(card.get("content") or "") or str(template.get("sub_title_text") or "")
        buttons = [] if card.get("replaced") else template.get("button_list") or []
        blocks: list[View] = []
        if text:
            blocks.append({"type": "markdown", "text": text})
        extra = str(template.get("sub_title_text") or "")
        if card.get("content") and extra:
            blocks.append({"type": "note", "text": extra})
        if card.get("replaced"):
            blocks.append({"type": "note", "text": str(card["replaced"])})
        if buttons:
            blocks.append({"type": "divider"})
            blocks.append(
                {
                    "type": "buttons",
                    "buttons": [
                        {
                            "id": str(b.get("key")),
                            "label": b.get("text"),
                            "style": {1: "primary", 3: "danger"}.get(b.get("style"), "default"),
                        }
                        for b in buttons
                    ],
                }
            )
        title = (template.get("main_title") or {}).get("title") or None
        return {
            "id": card["id"],
            "conversation_id": self._direct.get(card["conversation_id"], card["conversation_id"]),
            "reply_to": card.get("reply_to"),
            "title": title,
            "status": _status(card),
            "blocks": blocks,
            "updates": card.get("updates", 0),
            "created": card.get("created"),
            "updated": card.get("updated"),
        }

    @staticmethod
    def _public(card: View) -> View:
        return {k: v for k, v in card.items() if not k.startswith("_")}

    # ---------------------------------------------------------------- user side
    async def say(
        self,
        *,
        text: str,
        conversation_id: str,
        group: bool,
        user_id: str,
        user_name: str,
        mention: bool,
    ) -> str:
        return await self.say_with_attachments(
            attachments=(),
            text=text,
            conversation_id=conversation_id,
            group=group,
            user_id=user_id,
            user_name=user_name,
            mention=mention,
        )

    async def say_with_attachments(
        self,
        *,
        attachments: Sequence[tuple[str, str, bytes]],
        text: str = "",
        conversation_id: str,
        group: bool,
        user_id: str,
        user_name: str,
        mention: bool,
    ) -> str:
        shown = f"@robot {text}" if group and mention else text
        if not group or self.mode == "app":
            # App callbacks are one-to-one (a self-built app gets no group messages): a
            # group message said in app mode arrives as the user's direct message, and
            # what the robot sends that user shows in the conversation it was said in.
            self._direct[user_id] = conversation_id
        for kind, name, _ in attachments:
            shown = f"{shown} [{kind}: {name}]".strip()
        if self.mode == "app":
            self.record_message(conversation_id, user_id, user_name, shown, from_robot=False)
            self._callback_url()
            msg_id = ""
            if text or not attachments:
                msg_id = await self.emulator.push_app_message(
                    self.corp_id, user_id=user_id, content=text
                )
            for kind, name, data in attachments:
                msgtype, extra = self._app_media(kind, name, data)
                msg_id = await self.emulator.push_app_message(
                    self.corp_id, user_id=user_id, msgtype=msgtype, extra=extra
                )
            return msg_id
        self.record_message(conversation_id, user_id, user_name, shown, from_robot=False)
        if group and not mention:
            # WeCom pushes a group message to the robot only when it is @-mentioned.
            unpushed = f"unpushed-{secrets.token_hex(6)}"
            self.undelivered.add(unpushed)
            return unpushed
        chat_type: Literal["single", "group"] = "group" if group else "single"
        wire_text = f"@Robot {text}" if group else text
        parts: list[tuple[str, dict[str, Any]]] = []
        for kind, name, data in attachments:
            url, aeskey = self.emulator.store_file(data)
            wire = _KINDS.get(kind, "file")
            part: dict[str, Any] = {"url": url, "aeskey": aeskey}
            if wire == "file":
                part["filename"] = name
            parts.append((wire, part))
        content: dict[str, Any]
        if not parts:
            msgtype, content = "text", {"content": wire_text}
        elif len(parts) == 1 and not text:
            msgtype, content = parts[0]
        else:
            items: list[dict[str, Any]] = []
            if text:
                items.append({"msgtype": "text", "text": {"content": wire_text}})
            items.extend({"msgtype": w, w: p} for w, p in parts)
            msgtype, content = "mixed", {"msg_item": items}
        msgid = await self.emulator.push_message(
            self.bot_id,
            user_id=user_id,
            msgtype=msgtype,
            content=content,
            chat_type=chat_type,
            chatid=conversation_id if group else "",
        )
        return msgid

    def _app_media(self, kind: str, name: str, data: bytes) -> tuple[str, dict[str, str]]:
        """The msgtype and fields of an app callback carrying ``data`` (path/90239)."""
        msgtype = {"image": "image", "audio": "voice", "video": "video"}.get(kind, "file")
        media_id = self.emulator.store_media(data, msgtype, name)
        extra = {"MediaId": media_id}
        if msgtype == "image":
            extra["PicUrl"] = f"{self.emulator.base_url}/_emulator/pic/{media_id}"
        elif msgtype == "voice":
            extra["Format"] = "amr"
        elif msgtype == "video":
            extra["ThumbMediaId"] = media_id
        else:
            extra["FileName"] = name
        return msgtype, extra

    async def enter(self, *, user_id: str, conversation_id: str | None = None) -> str | None:
        """The user opens the robot's one-to-one chat: an ``enter_chat`` event (robot mode;
        WeCom sends it on the first entry of the day). What the robot answers shows in
        ``conversation_id`` (default: the user id). Returns the event's ``req_id``."""
        if self.mode != "robot":
            raise ValueError("enter_chat exists in robot mode only")
        self._direct[user_id] = conversation_id or user_id
        return await self.emulator.push_event(self.bot_id, "enter_chat", user_id=user_id)

    async def redeliver(self, message_id: str) -> None:
        if self.mode == "app":
            await self.emulator.push_app_message(self.corp_id, user_id="", msg_id=message_id)
            return
        await self.emulator.redeliver(self.bot_id, message_id)

    async def press(self, *, card_id: str, button_id: str, user_id: str) -> None:
        if card_id not in self._cards:
            raise ValueError(f"no card {card_id!r}")
        if self.mode == "app":
            self._callback_url()
            await self.emulator.press_app(
                self.corp_id, card_id=card_id, key=button_id, user_id=user_id
            )
        else:
            await self.emulator.press(self.bot_id, card_id=card_id, key=button_id, user_id=user_id)
        self.emit({"type": "feedback", "feedback": {"card_id": card_id, "button_id": button_id}})

    # ---------------------------------------------------------------- inspection
    def state(self) -> dict[str, list[View]]:
        return {
            "messages": list(self.messages),
            "cards": [self._public(c) for c in self._cards.values()],
            "calls": list(self._calls),
        }

    def uploads(self) -> list[View]:
        return list(self.uploaded)

    async def fault(self, kind: str, value: float | None = None) -> None:
        if kind == "drop":
            await self.emulator.drop(self.bot_id if self.mode == "robot" else None)
            if self.mode == "robot":
                self.emit({"type": "connection", "connection": {"event": "close"}})
        elif kind == "errors":
            self.emulator.set_failure_rate(float(value or 0.0))
        elif kind == "rate_limit":
            self.emulator.set_rate_limit_rate(float(value or 0.0))
        elif kind == "latency":
            self.emulator.set_latency(float(value or 0.0))
        elif kind == "lost_answers":
            share = float(value or 0.0)
            self.emulator.set_lost_answer_rate(share)
            # Each lost ack costs the robot its ack_timeout (WeCom's 5 s). With answers
            # lost on purpose on loopback, the robots made here wait 1 s instead, so a
            # few losses in a row stay within the engine's deadlines.
            for platform in self._platforms:
                connection = platform.connection
                if connection is not None:
                    timeout = 1.0 if share else platform.settings.ack_timeout
                    connection.options = attrs.evolve(connection.options, ack_timeout=timeout)
        else:
            raise ValueError(
                f"unknown fault {kind!r}; choose drop, errors, rate_limit, latency or lost_answers"
            )
