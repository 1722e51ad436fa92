"""imrobots.loop: the event loop the command line runs robots on (IMROBOTS_LOOP)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from imrobots.errors import ConfigError
from imrobots.loop import (
    chosen_loop,
    fallback_warning,
    loop_choice,
    loop_name,
    new_event_loop,
    run,
)


async def _which() -> str:
    return loop_name()


@pytest.mark.parametrize(
    ("value", "choice"),
    [
        (None, "auto"),
        ("", "auto"),
        ("auto", "auto"),
        (" UVLOOP ", "uvloop"),
        ("asyncio", "asyncio"),
    ],
)
def test_the_choice_is_read_from_imrobots_loop(value: str | None, choice: str) -> None:
    env = {} if value is None else {"IMROBOTS_LOOP": value}
    assert loop_choice(env) == choice


def test_an_unknown_choice_is_a_config_error_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="IMROBOTS_LOOP='tokio' is not a loop") as caught:
        loop_choice({"IMROBOTS_LOOP": "tokio"})
    assert "auto" in str(caught.value) and "asyncio" in str(caught.value)


def test_auto_and_uvloop_run_on_uvloop_where_it_is_installed() -> None:
    pytest.importorskip("uvloop")
    assert run(_which(), env={}) == "uvloop"
    assert run(_which(), env={"IMROBOTS_LOOP": "uvloop"}) == "uvloop"


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    loop = new_event_loop({"IMROBOTS_LOOP": "asyncio"})
    try:
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert loop_name(loop) == "asyncio"
    finally:
        loop.close()
    assert run(_which(), env={"IMROBOTS_LOOP": "asyncio"}) == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uvloop has no Windows build: there the import fails, as it does here when hidden
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert run(_which(), env={}) == "asyncio"
    main = _which()
    with pytest.raises(ConfigError, match="uvloop is not installed: pip install"):
        run(main, env={"IMROBOTS_LOOP": "uvloop"})
    assert main.cr_frame is None  # closed, not left to warn "never awaited"


def test_chosen_loop_and_the_fallback_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    assert chosen_loop({"IMROBOTS_LOOP": "asyncio"}) == "asyncio"
    assert fallback_warning({"IMROBOTS_LOOP": "asyncio"}) is None
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert chosen_loop({}) == "asyncio"
    warning = fallback_warning({})
    assert warning is not None and 'pip install "uvloop>=0.19"' in warning
    monkeypatch.setattr(sys, "platform", "win32")  # no uvloop build there: nothing to say
    assert fallback_warning({}) is None
