"""Feishu platform plugin for imrobots (work in progress: registers the platform only)."""
