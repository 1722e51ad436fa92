"""The Feishu emulator adapter with the HTTP callback mode and the ``lost_answers``
fault: :class:`FeishuConsoleAdapter` plus ``mode`` (``long_connection`` or
``callback``), for the conformance suite and the callback tests.

(These belong in :mod:`imrobots_feishu.console`; they live here until that module's
console work lands, and fold into it unchanged.)
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Literal

from imrobots.config import structure
from imrobots.platform import Platform
from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.platform import FeishuPlatform, FeishuSettings

Mode = Literal["long_connection", "callback"]


class FeishuModeAdapter(FeishuConsoleAdapter):
    """One emulated Feishu app whose events reach the robot over the long connection or,
    in ``callback`` mode, as HTTP POSTs to the robot's callback endpoint (encrypted and
    signed unless ``encrypt=False``). The robot's URL is configured on the emulator (with
    its URL-verification challenge) once the robot listens, before the first event."""

    def __init__(self, *, mode: Mode = "long_connection", encrypt: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.mode = mode
        if mode == "callback" and encrypt:
            self.app.encrypt_key = secrets.token_urlsafe(24)
        self.platforms: list[FeishuPlatform] = []

    def robot_settings(self) -> dict[str, Any]:
        settings = super().robot_settings()
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
        settings = structure(self.robot_settings(), FeishuSettings, path="feishu emulator")
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

    async def say(self, **kw: Any) -> str:
        await self._route()
        return await super().say(**kw)

    async def say_with_attachments(
        self, *, attachments: Sequence[tuple[str, str, bytes]], **kw: Any
    ) -> str:
        await self._route()
        return await super().say_with_attachments(attachments=attachments, **kw)

    async def redeliver(self, message_id: str) -> None:
        await self._route()
        await super().redeliver(message_id)

    async def press(self, *, card_id: str, button_id: str, user_id: str) -> None:
        await self._route()
        await super().press(card_id=card_id, button_id=button_id, user_id=user_id)

    async def fault(self, kind: str, value: float | None = None) -> None:
        if kind == "lost_answers":
            self.emulator.set_lost_answer_rate(float(value or 0.0))
            return
        await super().fault(kind, value)
