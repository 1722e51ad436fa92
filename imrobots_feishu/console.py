"""The Feishu emulator seen through the core's emulator contract.

This is what ``imrobots demo``, ``imrobots emulate feishu``, the web console,
``imrobots.testing`` and the conformance suite use: one emulated Feishu app whose
robot is pointed at the emulator by :meth:`FeishuConsoleAdapter.robot_settings`.

Card views: a card is identified by its message id; its state is read from the
``text_tag`` in its header that :mod:`imrobots_feishu.cards` writes (Thinking,
Answering, Done, Error, Interrupted); a thinking card whose entity already got
streamed text shows as streaming.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence
from typing import Any, Literal

import imrobots
from imrobots.platform import Platform, structure_settings

from .emulator import FeishuEmulator
from .emulator.emulator import message_text
from .platform import FeishuPlatform, FeishuSettings

__all__ = ["FIXED_APP_ID", "FeishuConsoleAdapter"]

View = dict[str, Any]
_STATUS = {
    "Thinking": "thinking",
    "Answering": "streaming",
    "Done": "final",
    "Error": "error",
    "Interrupted": "interrupted",
}
_apps = itertools.count(1)
FIXED_APP_ID = "cli_emulatorapp"
"""The emulated app's App ID when its secret is fixed (``client_secret``)."""
_KINDS = {"image": "image", "file": "file", "audio": "audio", "video": "media"}


class FeishuConsoleAdapter(imrobots.EmulatorAdapter):
    """One Feishu emulator hosting one robot app, for the console and tests."""

    platform = "feishu"
    title = "Feishu"

    def __init__(
        self,
        *,
        port: int = 0,
        card_mode: Literal["cardkit", "patch"] = "cardkit",
        mode: Literal["long_connection", "callback"] = "long_connection",
        encrypt: bool = True,
        app_id: str | None = None,
        client_secret: str | None = None,
        **emulator_options: Any,
    ) -> None:
        """``client_secret`` is the emulated app's App Secret, so that a printed config
        stays valid across restarts (``imrobots emulate feishu --client-secret``); the App
        ID is then :data:`FIXED_APP_ID` unless ``app_id`` is given. By default both are
        new and random (each adapter in a process is its own app).

        ``mode`` is how events reach the robot: over the long connection, or (``callback``)
        as HTTP POSTs to the robot's callback endpoint, encrypted with a new Encrypt Key
        and signed unless ``encrypt=False``. In callback mode the robot's URL is set on the
        emulator (with its URL-verification challenge) once the robot listens, before the
        first event; that needs the platform object, so the adapter builds it
        (:meth:`create_platform`)."""
        super().__init__()
        self.emulator = FeishuEmulator(port=port, **emulator_options)
        self.card_mode = card_mode
        self.mode = mode
        if app_id is None and client_secret is not None:
            app_id = FIXED_APP_ID
        self.app_id = app_id or f"cli_emu{secrets.token_hex(4)}{next(_apps)}"
        self._secret = client_secret or secrets.token_urlsafe(24)
        self.app = self.emulator.add_app(self.app_id, self._secret)
        if mode == "callback" and encrypt:
            self.app.encrypt_key = secrets.token_urlsafe(24)
        self.platforms: list[FeishuPlatform] = []
        self._limits: dict[str, Any] = {}
        self._cards: dict[str, View] = {}
        self._values: dict[str, dict[str, Any]] = {}
        self._calls: list[View] = []
        self._said: dict[str, str] = {}
        """Message id -> the event id that delivered it (for redelivery)."""
        self._remove_listener = self.emulator.on_change(self._on_event)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self.emulator.start()

    async def stop(self) -> None:
        await self.emulator.stop()

    @property
    def base_url(self) -> str | None:
        return self.emulator.base_url

    def robot_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "app_id": self.app_id,
            "app_secret": self._secret,
            "domain": self.emulator.base_url,
            "card_mode": self.card_mode,
            "reconnect_initial": 0.05,
            "reconnect_max": 1.0,
            **self._limits,
        }
        if self.mode == "callback":
            settings.update(
                mode="callback",
                verification_token=self.app.verification_token,
                callback_port=0,
            )
            if self.app.encrypt_key:
                settings["encrypt_key"] = self.app.encrypt_key
        return settings

    def create_platform(self) -> Platform | None:
        """In callback mode, the robot's platform (the adapter needs its callback URL,
        known once it listens); ``None`` otherwise (the robot is built from
        :meth:`robot_settings` as usual)."""
        if self.mode != "callback":
            return None
        settings = structure_settings(self.robot_settings(), FeishuSettings, path="feishu emulator")
        platform = FeishuPlatform(settings)
        self.platforms.append(platform)
        return platform

    async def _route(self) -> None:
        """Point the app's callbacks at the newest listening robot (callback mode)."""
        if self.mode != "callback":
            return
        for platform in reversed(self.platforms):
            url = platform.callback_url
            if url and platform.endpoint is not None:
                if url != self.app.callback_url:
                    await self.emulator.set_callback_url(self.app_id, url)
                return

    def configure(
        self,
        *,
        max_text: int | None = None,
        max_message_text: int | None = None,
        stream_lifetime: float | None = None,
    ) -> None:
        if max_text is not None:
            self.emulator.markdown_bytes = max_text
            self._limits["max_text"] = max_text
        if max_message_text is not None:
            self.emulator.message_text_bytes = max_message_text
            self._limits["max_message_text"] = max_message_text
        if stream_lifetime is not None:
            self.emulator.stream_lifetime = stream_lifetime
            self._limits["stream_lifetime"] = stream_lifetime

    # ---------------------------------------------------------------- events
    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        record = event.get("record") or {}
        if kind == "call":
            view = {
                "time": event["wall"],
                "method": record.get("method", ""),
                "route": record.get("path", ""),
                "status": record.get("status", 0),
                "error": record.get("code") or None,
                "rate_limited": bool(record.get("rate_limited")),
                "latency_ms": round(1000 * float(record.get("latency") or 0.0), 1),
            }
            self._calls.append(view)
            self.emit({"type": "call", "call": view})
        elif kind == "card":
            view = self._card_view(record)
            self._cards[view["id"]] = view
            self.emit({"type": "card", "card": view})
        elif kind == "message" and record.get("from_app"):
            receivers = list(record.get("receivers") or [])
            content = dict(record.get("content") or {})
            resource = self.emulator.resources.get(str(content.get("file_key")))
            if resource is not None and resource.name:  # Feishu's content has only the key
                content.setdefault("file_name", resource.name)
            text = message_text(record.get("msg_type", ""), content)
            self.record_message(
                record.get("chat_id") or "",
                "robot",
                self.app.bot_name,
                text,
                from_robot=True,
                receivers=receivers,
            )
        elif kind == "upload":
            self.record_upload(
                record.get("conversation_id") or "",
                record.get("kind") or "file",
                record.get("name"),
                int(record.get("size") or 0),
            )
        elif kind == "connection":
            self.emit({"type": "connection", "connection": {"event": event.get("event")}})

    def _card_view(self, record: dict[str, Any]) -> View:
        card = record.get("card") or {}
        tags = card.get("tags") or ()
        status = _STATUS.get(tags[0]) if tags else None
        if status == "thinking" and (record.get("content_updates") or 0) > 0:
            status = "streaming"
        blocks: list[View] = []
        values: dict[str, Any] = {}
        for block in card.get("blocks") or ():
            if block.get("type") == "buttons":
                buttons = []
                for button in block.get("buttons") or ():
                    values[button["id"]] = button.get("value")
                    buttons.append(
                        {"id": button["id"], "label": button["label"], "style": button["style"]}
                    )
                blocks.append({"type": "buttons", "buttons": buttons})
            else:
                blocks.append(dict(block))
        if status is None:
            status = "final"
        message_id = str(record.get("message_id"))
        self._values[message_id] = values
        return {
            "id": message_id,
            "conversation_id": record.get("chat_id"),
            "reply_to": record.get("parent_id") or None,
            "title": card.get("title"),
            "status": status,
            "blocks": blocks,
            "updates": int(record.get("updates") or 0),
            "created": record.get("created"),
            "updated": record.get("updated"),
        }

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
        await self._route()
        shown = f"@{self.app.bot_name} {text}" if group and mention else text
        self.record_message(conversation_id, user_id, user_name, shown, from_robot=False)
        mentions = [self.emulator.bot_mention(self.app)] if group and mention else []
        content = {"text": f"@_user_1 {text}" if mentions else text}
        record, delivery = self.emulator.push_message(
            self.app_id,
            chat_id=conversation_id,
            chat_type="group" if group else "p2p",
            sender=user_id,
            message_type="text",
            content=content,
            mentions=mentions,
        )
        self._said[record.message_id] = delivery.event_id
        return record.message_id

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
        await self._route()
        shown = f"@{self.app.bot_name} {text}".strip() if group and mention else text
        for kind, name, _ in attachments:
            shown = f"{shown} [{kind}: {name}]".strip()
        self.record_message(conversation_id, user_id, user_name, shown, from_robot=False)
        mentions = [self.emulator.bot_mention(self.app)] if group and mention else []
        resources = [
            (kind, name, self.emulator.add_resource(kind, data, name=name))
            for kind, name, data in attachments
        ]
        if len(resources) == 1 and not text and not mentions:
            kind, name, resource = resources[0]
            message_type = _KINDS.get(kind, "file")
            content: dict[str, Any] = (
                {"image_key": resource.key}
                if kind == "image"
                else {"file_key": resource.key, "file_name": name}
            )
        else:
            message_type = "post"
            line: list[dict[str, Any]] = []
            if mentions:
                line.append({"tag": "at", "user_id": "@_user_1", "user_name": self.app.bot_name})
            if text:
                line.append({"tag": "text", "text": text})
            for kind, _, resource in resources:
                if kind == "image":
                    line.append({"tag": "img", "image_key": resource.key})
            content = {"title": "", "content": [line]}
        record, delivery = self.emulator.push_message(
            self.app_id,
            chat_id=conversation_id,
            chat_type="group" if group else "p2p",
            sender=user_id,
            message_type=message_type,
            content=content,
            mentions=mentions,
        )
        for _, _, resource in resources:
            resource.message_id = record.message_id
        self._said[record.message_id] = delivery.event_id
        return record.message_id

    async def redeliver(self, message_id: str) -> None:
        await self._route()
        event_id = self._said.get(message_id)
        if event_id is None:
            raise ValueError(f"no message {message_id!r} was said on this emulator")
        await self.emulator.redeliver(event_id)

    async def press(self, *, card_id: str, button_id: str, user_id: str) -> None:
        await self._route()
        values = self._values.get(card_id)
        if values is None:
            raise ValueError(f"no card {card_id!r}")
        if button_id not in values:
            raise ValueError(f"card {card_id} has no button {button_id!r}")
        self.emit({"type": "feedback", "feedback": {"card_id": card_id, "button_id": button_id}})
        await self.emulator.press_button(
            self.app_id, message_id=card_id, value=values[button_id], operator=user_id
        )

    # ---------------------------------------------------------------- inspection
    def state(self) -> dict[str, list[View]]:
        return {
            "messages": list(self.messages),
            "cards": list(self._cards.values()),
            "calls": list(self._calls),
        }

    def uploads(self) -> list[View]:
        return list(self.uploaded)

    async def fault(self, kind: str, value: float | None = None) -> None:
        if kind == "drop":
            await self.emulator.drop_connections(self.app_id)
        elif kind == "errors":
            self.emulator.set_failure_rate(float(value or 0.0))
        elif kind == "rate_limit":
            self.emulator.set_rate_limit_rate(float(value or 0.0))
        elif kind == "latency":
            self.emulator.set_latency(float(value or 0.0))
        elif kind == "lost_answers":
            self.emulator.set_lost_answer_rate(float(value or 0.0))
        else:
            raise ValueError(
                f"unknown fault {kind!r}; choose drop, errors, rate_limit, latency or lost_answers"
            )
