"""EmulatorThread: the emulator on its own loop, driven from blocking code."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from imrobots_dingtalk.emulator import EmulatorThread

APP = "dingthreadapp"
SECRET = "thread-secret"


def test_emulator_thread_with_blocking_client() -> None:
    with EmulatorThread(seed=9, ping_interval=None) as runner:
        runner.run(runner.emulator.add_app, APP, SECRET)
        request = urllib.request.Request(
            f"{runner.base_url}/v1.0/oauth2/accessToken",
            data=json.dumps({"appKey": APP, "appSecret": SECRET}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert "accessToken" in json.loads(resp.read())
        runner.wait_for(lambda: len(runner.emulator.calls) == 1)
        pushed = runner.call(runner.emulator.push_message, APP, text="from a thread")
        assert pushed.queued
        with pytest.raises(TimeoutError):
            runner.wait_for(lambda: False, 0.05)


def test_emulator_thread_wait_for_from_another_thread() -> None:
    with EmulatorThread(seed=10, ping_interval=None) as runner:
        emulator = runner.emulator
        worker = threading.Timer(0.05, runner.run, args=(emulator.add_app, APP, SECRET))
        worker.start()
        runner.wait_for(lambda: APP in emulator.apps, 5)
        worker.join(5)
    with pytest.raises(RuntimeError):
        _ = runner.loop
