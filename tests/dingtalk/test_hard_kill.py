"""A real hard kill (issue 9, case 9): a robot process on the SQLite store, answering
through the DingTalk emulator in AI-card mode, is killed with SIGKILL mid-answer. Its
AI card stays "inputing" (nothing ran to close it). A new process on the same config and
store closes it as interrupted, with the text it had: a ``card/streaming`` call with
``isError`` (DingTalk shows it failed), then ``flowStatus`` 5 and ``stopReason``
``interrupted``, read on the emulator's card view. It does so at start when it has the
killed process's replica name (``[robots.NAME.options] replica``), else once the killed
process's lease in the store lapsed (``liveness_ttl``, 30 s by default, 1 s here)."""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import pytest

from imrobots.app import build_runtimes
from imrobots.config import load_config
from imrobots_dingtalk.emulator import DingTalkEmulator

from .support import APP, start_run, write_robots_toml

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

QUESTION = "How do I get a refund?"


def _config(emu: DingTalkEmulator, directory: Path, options: str) -> Path:
    return write_robots_toml(
        emu,
        directory,
        before=f'[store]\nbackend = "sqlite"\npath = "{directory / "state.sqlite3"}"\n',
        agent='use = "demo"\ndelay = 0.15',
        after=f"\n[robots.support.options]\n{options}",
    )


def _streams(emu: DingTalkEmulator, card_id: str) -> list[dict[str, object]]:
    return [
        c.request
        for c in emu.calls
        if c.route == "card.streaming" and c.request.get("outTrackId") == card_id
    ]


OPTIONS = {
    # the restarted process has the killed one's replica name: it closes the card at start
    "same-replica": 'replica = "worker-1"\nliveness_ttl = 30.0',
    # no replica name: the card is closed once the killed process's lease lapsed
    "lease-lapsed": "liveness_ttl = 1.0",
}


@pytest.mark.parametrize("restart", list(OPTIONS))
async def test_a_card_left_open_by_sigkill_is_closed_as_interrupted_by_the_next_process(
    emu: DingTalkEmulator, restart: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as log:
        config = _config(emu, Path(tmp), OPTIONS[restart])
        proc = await start_run(config, output=log)
        try:
            await emu.wait_for(lambda: bool(emu.live_connections(APP)), 20, what="robot up")
            pushed = await emu.push_message(APP, text=QUESTION)

            def streaming() -> bool:
                return any(
                    c.conversation_id == pushed.conversation_id
                    and c.streaming_state == "inputing"
                    and len(_streams(emu, c.card_id)) >= 2
                    for c in emu.cards.values()
                )

            await emu.wait_for(streaming, 20, what="the answer streaming")
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        except BaseException:
            log.seek(0)
            print(log.read().decode("utf-8", errors="replace")[-4000:])
            raise
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        (card,) = emu.cards.values()
        shown = card.content["msgContent"]
        assert card.streaming_state == "inputing" and card.content["flowStatus"] == "2"
        assert shown.startswith("You can")
        calls_before = len(emu.calls)

        # a new process on the same config and store
        (runtime,) = build_runtimes(load_config(config))
        await runtime.start()
        try:
            await emu.wait_for(
                lambda: runtime.stats.recovered == 1 and "stopReason" in card.content,
                10,
                what="the card closed as interrupted",
            )
        finally:
            await runtime.stop(timeout=5)

    closing = [c.route for c in emu.calls[calls_before:] if c.route.startswith("card.")]
    assert closing == ["card.streaming", "card.instances.update"]
    last = _streams(emu, card.card_id)[-1]
    assert last["isError"] is True and last["isFinalize"] is False
    assert card.streaming_state == "failed" and card.content["flowStatus"] == "5"
    assert card.content["stopReason"] == "interrupted"
    # the text it had (what the store recorded at the last update), then the core's note
    markdown = card.view["markdown"] or ""
    had, _, note = markdown.partition("\n\n")
    assert had.strip() and shown.startswith(had.strip()) and note == "(answer interrupted)"
    assert card.view["status"] == "failed"
