"""The soak of ``bench/soak.py``, 20 seconds of it: 3 replicas on Redis against one DingTalk
emulator app, 4 messages a second, a connection dropped every 10 s, one replica killed with
SIGKILL and restarted, Redis restarted once. Every message is answered (final, or closed as
interrupted by another replica when its replica was killed mid-answer), none twice, none
lost, no call refused for a rate limit, no card left thinking or streaming."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from bench.soak import soak

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


async def test_a_20_second_soak_meets_the_goals(tmp_path: Path) -> None:
    pytest.importorskip("redis.asyncio", reason='needs "imrobots[redis]"')
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    result, events = await soak(seconds=20.0, directory=tmp_path, verbose=False)
    report = "\n".join([*events, *result.lines()])
    assert result.sent == 80, report
    assert result.answered == result.sent, report
    assert result.wrongly_interrupted == 0, report
    assert result.duplicated == 0, report
    assert result.lost == 0, report
    assert result.rate_limited == 0, report
    assert result.stuck == 0, report
    assert any("SIGKILL" in e for e in events) and any("redis restarted" in e for e in events)
    assert sum("dropped connection" in e for e in events) >= 1
