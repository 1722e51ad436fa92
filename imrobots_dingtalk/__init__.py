"""DingTalk platform plugin for imrobots."""

from __future__ import annotations
