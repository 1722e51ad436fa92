"""The DingTalk emulator seen through the core's emulator contract.

This is what ``imrobots demo``, ``imrobots emulate dingtalk``, the web console,
``imrobots.testing`` and the platform conformance suite use: one emulated DingTalk
app whose robot is pointed at the emulator by :meth:`DingTalkConsoleAdapter.robot_settings`.

Views name conversations as the user's :meth:`~DingTalkConsoleAdapter.say` did: DingTalk
addresses a 1:1 card or robot message to the user (the emulator files it under the
robot's chat with that user), and the adapter maps it back to the conversation the
user spoke in, so the console's direct chat shows the answer beside the question.

An AI card's ``status`` comes from the wire, as DingTalk would show it: its ``state``
(DingTalk's ``processing``, ``inputting``, ``finished`` or ``failed``: the streaming
call's ``isFinalize`` / ``isError`` with the ``flowStatus`` param saying the same, else
inputting once text came, else processing) maps to ``thinking``, ``streaming``,
``final`` and ``error``, and a failed card whose ``stopReason`` param is ``interrupted`` is
``interrupted``. Card views carry that ``state`` too (``None`` for StandardCards, which
have no state on the wire).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Literal

from imrobots.emulation import EmulatorAdapter

from .cards import STOP_REASON_KEY
from .emulator import DingTalkEmulator
from .emulator.frames import conversation_id as direct_conversation_id

__all__ = ["DingTalkConsoleAdapter"]

View = dict[str, Any]

# An AI card's state as DingTalk shows it, from the wire: the streaming call's isFinalize
# (finished) or isError (failed) closes the card's streaming (PROTOCOLS 2.5), and the
# card is finished (failed) once its flowStatus param, the template's state, says so too
# (the plugin sets it with the buttons right after); before that it is inputting
# (flowStatus 2, or text streamed) or processing. A card whose streaming was never closed
# is never shown finished, whatever its flowStatus says. The core's lifecycle status
# follows from the state; a failed card is "interrupted" when its stopReason param says
# so (the plugin sets it when it closes the card), else "error". No status is read from
# the card's text.
_AI_STATUS = {
    "processing": "thinking",
    "inputting": "streaming",
    "finished": "final",
    "failed": "error",
}

_INTERRUPTED = "(answer interrupted)"
_CONTINUED = "(continued below)"

_KINDS: dict[str, Literal["picture", "file", "audio", "video"]] = {
    "image": "picture",
    "file": "file",
    "audio": "audio",
    "video": "video",
}
"""Attachment kinds of the emulator contract -> DingTalk message types."""

NOTE_ROOM = 256
"""Bytes a card's notes may add to its text, over a configured ``max_text``."""
CARD_DATA_ROOM = 4096
"""Bytes a StandardCard's JSON (title, ids, buttons) may add to its text."""


def _ai_state(record: dict[str, Any]) -> tuple[str, str]:
    """(DingTalk's state of an AI card, the core's status) from the wire."""
    content = record.get("content") or {}
    streaming = record.get("streaming_state")
    flow = content.get("flowStatus")
    if streaming == "failed" and flow == "5":
        state = "failed"
    elif streaming == "finished" and flow == "3":
        state = "finished"
    elif streaming == "inputing" or flow in ("2", "4"):
        state = "inputting"
    else:  # nothing streamed yet, or streaming closed before the card said inputting
        state = "processing"
    status = _AI_STATUS[state]
    if state == "failed" and content.get(STOP_REASON_KEY) == "interrupted":
        status = "interrupted"
    return state, status


def _standard_status(markdown: str, buttons: list[Any], updates: int) -> str:
    """StandardCards carry no state on the wire (the API has none), so it is read off the
    core's lifecycle cards: buttons, then the core's notes."""
    if buttons or _CONTINUED in markdown:
        return "final"
    if _INTERRUPTED in markdown:
        return "interrupted"
    if "Sorry, " in markdown and ("went wrong" in markdown or "too long" in markdown):
        return "error"
    if updates == 0 and markdown.lstrip().startswith("[thinking]"):
        return "thinking"
    return "streaming"


class DingTalkConsoleAdapter(EmulatorAdapter):
    """One DingTalk emulator hosting one robot app, for the console and tests."""

    platform = "dingtalk"
    title = "DingTalk"

    def __init__(
        self,
        *,
        port: int = 0,
        card_mode: Literal["standard", "ai"] = "ai",
        ai_template_id: str | None = None,
        qps_limit: int = 20,
        client_id: str = "dingemulatorapp",
        client_secret: str | None = None,
        **emulator_options: Any,
    ) -> None:
        """``client_secret`` fixes the emulated app's secret (``imrobots emulate
        --client-secret``), so that a saved config keeps working; default: a random one."""
        super().__init__()
        self.emulator = DingTalkEmulator(port=port, qps_limit=qps_limit, **emulator_options)
        self.card_mode = card_mode
        self.ai_template_id = ai_template_id
        """An AI card template of one's own; ``None``: DingTalk's built-in one (the
        default a new app gets)."""
        self.client_id = client_id
        self._secret = client_secret or secrets.token_urlsafe(24)
        self.emulator.add_app(client_id, self._secret)
        self._cards: dict[str, View] = {}
        self._calls: list[View] = []
        self._chats: dict[str, str] = {}
        """The emulator's id of the robot's 1:1 chat with a user -> the id the user said."""
        self._limits: dict[str, int] = {}
        self._remove_listener = self.emulator.on_change(self._on_event)

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self.emulator.start()

    async def stop(self) -> None:
        await self.emulator.stop()

    @property
    def base_url(self) -> str | None:
        return self.emulator.base_url

    @property
    def control_token(self) -> str | None:
        return self.emulator.control_token

    def configure(
        self,
        *,
        max_text: int | None = None,
        max_message_text: int | None = None,
        stream_lifetime: float | None = None,
    ) -> None:
        """Smaller limits for a test, in bytes, enforced by the emulator and declared by
        the robot's settings. DingTalk streams never expire: ``stream_lifetime`` is
        ignored (the platform declares none)."""
        if max_text is not None:
            self._limits["max_text"] = max_text
            self.emulator.stream_content_limit = max_text + NOTE_ROOM
            self.emulator.card_data_limit = max_text + CARD_DATA_ROOM
        if max_message_text is not None:
            self._limits["max_message_text"] = max_message_text
            self.emulator.webhook_text_limit = max_message_text

    def robot_settings(self) -> dict[str, Any]:
        host = self.emulator.base_url.split("//", 1)[1].split(":", 1)[0]
        settings: dict[str, Any] = {
            "client_id": self.client_id,
            "client_secret": self._secret,
            "openapi_endpoint": self.emulator.base_url,
            "oapi_endpoint": self.emulator.base_url,
            "webhook_hosts": [host],
            "download_hosts": [host],
            "card_mode": self.card_mode,
            **self._limits,
        }
        if self.card_mode == "ai" and self.ai_template_id is not None:
            settings["ai_template_id"] = self.ai_template_id
        return settings

    def environment(self) -> dict[str, str]:
        """Environment variables that point the official dingtalk-stream SDK at the emulator."""
        return {"DINGTALK_OPENAPI_ENDPOINT": self.emulator.base_url}

    # ---------------------------------------------------------------- events
    def _conversation(self, emulated: str | None, users: Sequence[str] = ()) -> str:
        """The conversation id a view shows: what the user said, for 1:1 chats too."""
        if emulated and emulated in self._chats:
            return self._chats[emulated]
        if emulated:
            return emulated
        return users[0] if len(users) == 1 else ""

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        record = event.get("record") or {}
        if kind == "call":
            view = {
                "time": event["wall"],
                "method": record.get("method", ""),
                "route": record.get("path", ""),
                "status": record.get("status", 0),
                "error": record.get("error_code"),
                "rate_limited": "QpsLimit" in str(record.get("error_code") or "")
                or record.get("status") == 429,
                "latency_ms": round(1000 * float(record.get("latency") or 0.0), 1),
                # for the console's call inspector (the emulator redacts secrets in them)
                "request": record.get("request"),
                "response": record.get("response"),
            }
            self._calls.append(view)
            self.emit({"type": "call", "call": view})
        elif kind == "card":
            view = self._card_view(record)
            self._cards[view["id"]] = view
            self.emit({"type": "card", "card": self._public(view)})
        elif kind == "webhook" and record.get("errcode") == 0:
            self.record_message(
                self._conversation(record.get("conversation_id")),
                "robot",
                "Robot",
                record.get("text") or "",
                from_robot=True,
            )
        elif kind == "sent":
            self._on_sent(record)
        elif kind == "connection":
            self.emit({"type": "connection", "connection": {"event": event.get("event")}})

    def _on_sent(self, record: dict[str, Any]) -> None:
        users = [str(u) for u in record.get("user_ids") or []]
        conversation = self._conversation(record.get("conversation_id"), users)
        media = record.get("media")
        if isinstance(media, dict):
            kind = "image" if media.get("type") == "image" else "file"
            self.record_upload(conversation, kind, media.get("name"), int(media.get("size") or 0))
            text = f"[{kind}: {media.get('name') or media.get('media_id')}]"
        else:
            param = record.get("msg_param")
            text = str(
                (param.get("text") or param.get("content") or "")
                if isinstance(param, dict)
                else param or ""
            )
        self.record_message(conversation, "robot", "Robot", text, from_robot=True, receivers=users)

    def _card_view(self, record: dict[str, Any]) -> View:
        view = record.get("view") or {}
        markdown = view.get("markdown") or ""
        buttons = view.get("buttons") or []
        updates = len(record.get("updates") or []) - 1
        state: str | None = None
        if record.get("kind") == "standard":
            status = _standard_status(markdown, buttons, updates)
        else:
            state, status = _ai_state(record)
        blocks: list[View] = []
        if markdown:
            blocks.append({"type": "markdown", "text": markdown})
        if buttons:
            blocks.append({"type": "divider"})
            blocks.append(
                {
                    "type": "buttons",
                    "buttons": [
                        {"id": b["id"], "label": b["label"], "style": b.get("style", "default")}
                        for b in buttons
                    ],
                }
            )
        receivers = [str(u) for u in record.get("receiver_user_ids") or []]
        return {
            "id": record.get("card_id"),
            "conversation_id": self._conversation(record.get("conversation_id"), receivers),
            "reply_to": None,
            "title": view.get("title"),
            "status": status,
            "state": state,
            "blocks": blocks,
            "updates": max(updates, 0),
            "created": record.get("wall"),
            "updated": (record.get("updates") or [{}])[-1].get("wall", record.get("wall")),
            "_buttons": {b["id"]: b.get("value", "") for b in buttons},
        }

    # ---------------------------------------------------------------- user side
    def _note_chat(self, conversation_id: str, group: bool, user_id: str, user_name: str) -> None:
        if not group:
            app = self.emulator.apps[self.client_id]
            self._chats[direct_conversation_id(app, "direct", user_id or user_name)] = (
                conversation_id
            )

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
        shown = f"@robot {text}" if group and mention else text
        self._note_chat(conversation_id, group, user_id, user_name)
        self.record_message(conversation_id, user_id, user_name, shown, from_robot=False)
        pushed = await self.emulator.push_message(
            self.client_id,
            text=text,
            conversation_type="group" if group else "direct",
            conversation_id=conversation_id,
            conversation_title="Customer support" if group else None,
            sender_staff_id=user_id,
            sender_nick=user_name,
            at_robot=mention or not group,
        )
        return pushed.msg_id

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
        """A picture, file, voice or video message; text with pictures is rich text.
        DingTalk has no message that carries text with a file, or several files."""
        if not attachments:
            raise ValueError("give at least one attachment")
        for kind, _, _ in attachments:
            if kind not in _KINDS:
                raise ValueError(f"attachment kind must be one of {sorted(_KINDS)}, not {kind!r}")
        self._note_chat(conversation_id, group, user_id, user_name)
        names = ", ".join(f"[{kind}: {name}]" for kind, name, _ in attachments)
        self.record_message(
            conversation_id, user_id, user_name, f"{text} {names}".strip(), from_robot=False
        )
        common: dict[str, Any] = {
            "conversation_type": "group" if group else "direct",
            "conversation_id": conversation_id,
            "conversation_title": "Customer support" if group else None,
            "sender_staff_id": user_id,
            "sender_nick": user_name,
            "at_robot": mention or not group,
        }
        if len(attachments) == 1 and not text:
            kind, name, data = attachments[0]
            pushed = await self.emulator.push_attachment(
                self.client_id,
                _KINDS[kind],
                data,
                name=name,
                **common,
            )
            return pushed.msg_id
        if any(kind != "image" for kind, _, _ in attachments):
            raise ValueError(
                "DingTalk carries text or several attachments only as rich text, "
                "which holds pictures only"
            )
        items: list[dict[str, Any]] = [{"text": text}] if text else []
        for _, name, data in attachments:
            stored = self.emulator.add_file(self.client_id, data, kind="picture", name=name)
            items.append({"type": "picture", "downloadCode": stored.download_code})
        pushed = await self.emulator.push_message(
            self.client_id, msgtype="richText", content={"richText": items}, **common
        )
        return pushed.msg_id

    async def redeliver(self, message_id: str) -> None:
        await self.emulator.redeliver_message(self.client_id, message_id)

    async def press(self, *, card_id: str, button_id: str, user_id: str) -> None:
        card = self._cards.get(card_id)
        if card is None:
            raise ValueError(f"no card {card_id!r}")
        values: dict[str, str] = card["_buttons"]
        if button_id not in values:
            raise ValueError(f"card {card_id} has no button {button_id!r}")
        await self.emulator.press_button(
            self.client_id,
            card_id=card_id,
            action_id=button_id,
            params={"value": values[button_id]},
            user_id=user_id,
        )
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

    @staticmethod
    def _public(card: View) -> View:
        return {k: v for k, v in card.items() if not k.startswith("_")}

    async def fault(self, kind: str, value: float | None = None) -> None:
        if kind == "drop":
            dropped = self.emulator.live_connections(self.client_id)
            await self.emulator.drop_connections(self.client_id)
            await self.emulator.wait_for(
                lambda: not any(c.live for c in dropped), 5.0, what="dropped connections closed"
            )
        elif kind == "errors":
            self.emulator.set_failure_rate(float(value or 0.0), kind="5xx")
        elif kind == "rate_limit":
            self.emulator.set_failure_rate(float(value or 0.0), kind="qps")
        elif kind == "latency":
            self.emulator.set_latency(float(value or 0.0))
        elif kind == "lost_answers":
            self.emulator.set_lost_rate(float(value or 0.0))
        else:
            raise ValueError(
                f"unknown fault {kind!r}; choose drop, errors, rate_limit, latency or lost_answers"
            )
