"""The DingTalk emulator seen through the core's emulator contract.

This is what ``imrobots demo``, ``imrobots emulate dingtalk``, the web console
and ``imrobots.testing`` use: one emulated DingTalk app whose robot is pointed
at the emulator by :meth:`DingTalkConsoleAdapter.robot_settings`.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

import imrobots

from .emulator import DingTalkEmulator

__all__ = ["DingTalkConsoleAdapter"]

View = dict[str, Any]

# The AI card's flowStatus param (SDK AICardStatus) as a lifecycle state. The card is
# final when flowStatus says so (the plugin sets it with the buttons), not when the
# streaming variable is finalized a moment before.
_FLOW = {"1": "thinking", "2": "streaming", "3": "final", "4": "streaming", "5": "error"}


def _standard_status(markdown: str, buttons: list[Any], updates: int) -> str:
    """StandardCards carry no state, so read it off the core's lifecycle cards."""
    if buttons:
        return "final"
    if "(answer interrupted)" in markdown:
        return "interrupted"
    if "Sorry, " in markdown and ("went wrong" in markdown or "too long" in markdown):
        return "error"
    if updates == 0 and markdown.lstrip().startswith("[thinking]"):
        return "thinking"
    return "streaming"


class DingTalkConsoleAdapter(imrobots.EmulatorAdapter):
    """One DingTalk emulator hosting one robot app, for the console and tests."""

    platform = "dingtalk"
    title = "DingTalk"

    def __init__(
        self,
        *,
        port: int = 0,
        card_mode: Literal["standard", "ai"] = "ai",
        qps_limit: int = 20,
        client_id: str = "dingemulatorapp",
        **emulator_options: Any,
    ) -> None:
        super().__init__()
        self.emulator = DingTalkEmulator(port=port, qps_limit=qps_limit, **emulator_options)
        self.card_mode = card_mode
        self.client_id = client_id
        self._secret = secrets.token_urlsafe(24)
        self.emulator.add_app(client_id, self._secret)
        self._cards: dict[str, View] = {}
        self._calls: list[View] = []
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
        host = self.emulator.base_url.split("//", 1)[1].split(":", 1)[0]
        settings: dict[str, Any] = {
            "client_id": self.client_id,
            "client_secret": self._secret,
            "openapi_endpoint": self.emulator.base_url,
            "oapi_endpoint": self.emulator.base_url,
            "webhook_hosts": [host],
            "download_hosts": [host],
            "card_mode": self.card_mode,
        }
        if self.card_mode == "ai":
            settings["ai_template_id"] = "imrobots-answer.schema"
        return settings

    def environment(self) -> dict[str, str]:
        """Environment variables that point the official dingtalk-stream SDK at the emulator."""
        return {"DINGTALK_OPENAPI_ENDPOINT": self.emulator.base_url}

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
                "error": record.get("error_code"),
                "rate_limited": "QpsLimit" in str(record.get("error_code") or "")
                or record.get("status") == 429,
                "latency_ms": round(1000 * float(record.get("latency") or 0.0), 1),
            }
            self._calls.append(view)
            self.emit({"type": "call", "call": view})
        elif kind == "card":
            view = self._card_view(record)
            self._cards[view["id"]] = view
            self.emit({"type": "card", "card": self._public(view)})
        elif kind == "webhook" and record.get("errcode") == 0:
            self.record_message(
                record.get("conversation_id") or "",
                "robot",
                "Robot",
                record.get("text") or "",
                from_robot=True,
            )
        elif kind == "sent":
            param = record.get("msg_param")
            text = param.get("text") or param.get("content") if isinstance(param, dict) else param
            self.record_message(
                record.get("conversation_id") or "",
                "robot",
                "Robot",
                str(text or ""),
                from_robot=True,
            )
        elif kind == "connection":
            self.emit({"type": "connection", "connection": {"event": event.get("event")}})

    def _card_view(self, record: dict[str, Any]) -> View:
        view = record.get("view") or {}
        markdown = view.get("markdown") or ""
        buttons = view.get("buttons") or []
        updates = len(record.get("updates") or []) - 1
        if record.get("kind") == "standard":
            status = _standard_status(markdown, buttons, updates)
        else:
            status = _FLOW.get(str(view.get("flow_status")), "thinking")
            if status == "error" and "(answer interrupted)" in markdown:
                status = "interrupted"
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
        return {
            "id": record.get("card_id"),
            "conversation_id": record.get("conversation_id"),
            "reply_to": None,
            "title": view.get("title"),
            "status": status,
            "blocks": blocks,
            "updates": max(updates, 0),
            "created": record.get("wall"),
            "updated": (record.get("updates") or [{}])[-1].get("wall", record.get("wall")),
            "_buttons": {b["id"]: b.get("value", "") for b in buttons},
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
        shown = f"@robot {text}" if group and mention else text
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

    @staticmethod
    def _public(card: View) -> View:
        return {k: v for k, v in card.items() if not k.startswith("_")}

    async def fault(self, kind: str, value: float | None = None) -> None:
        if kind == "drop":
            await self.emulator.drop_connections(self.client_id)
        elif kind == "errors":
            self.emulator.set_failure_rate(float(value or 0.0))
        elif kind == "latency":
            self.emulator.set_latency(float(value or 0.0))
        else:
            raise ValueError(f"unknown fault {kind!r}; choose drop, errors or latency")
