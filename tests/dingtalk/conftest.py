"""The ``emu`` fixture: a DingTalk emulator on 127.0.0.1 with the tests' app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from imrobots_dingtalk.emulator import DingTalkEmulator

from .support import APP, SECRET


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[DingTalkEmulator]:
    async with DingTalkEmulator(seed=5, ping_interval=None, disconnect_grace=1.0) as emulator:
        emulator.add_app(APP, SECRET)
        yield emulator
