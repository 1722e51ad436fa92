"""Shared fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imrobots.plugins import PluginManager, reset_plugin_manager


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    """A fresh plugin manager with only the built-in plugins (no entry points)."""
    pm = PluginManager(load_entry_points=False)
    reset_plugin_manager(pm)
    yield pm
    reset_plugin_manager(None)
