"""The emulator web console: chat with robots on emulated platforms in a browser."""

from __future__ import annotations

from .server import Console, ConsoleStore

__all__ = ["Console", "ConsoleStore"]
