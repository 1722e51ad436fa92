"""Feishu intake: events/s and response-frame latency through the long connection.

Run: ``python bench/feishu_intake.py [--events 2000]``. The emulator (127.0.0.1) pushes
``im.message.receive_v1`` events to a FeishuPlatform whose sink only counts them; the
latency is from the emulator writing the DATA frame to reading the response frame, with
all events pushed at once (so it includes queueing behind the burst).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from imrobots.config import structure
from imrobots.platform import CardAction, Message
from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.platform import FeishuPlatform, FeishuSettings


async def main(events: int) -> None:
    adapter = FeishuConsoleAdapter()
    await adapter.start()
    settings = structure(adapter.robot_settings(), FeishuSettings, path="bench")
    platform = FeishuPlatform(settings)
    seen = 0

    async def sink(event: Message | CardAction) -> None:
        nonlocal seen
        seen += 1

    await platform.start(sink)
    started = time.perf_counter()
    deliveries = [
        adapter.emulator.push_message(
            adapter.app_id,
            chat_id=f"oc_{i % 100}",
            chat_type="group",
            sender="ou_bench",
            message_type="text",
            content={"text": f"message {i}"},
        )[1]
        for i in range(events)
    ]
    await asyncio.gather(*(d.done for d in deliveries if d.done is not None))
    elapsed = time.perf_counter() - started
    await adapter.emulator.wait_for(lambda: seen >= events, timeout=60)
    latencies = sorted(d.latencies[0] * 1000 for d in deliveries if d.latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"events: {events}, answered: {len(latencies)}, delivered to the sink: {seen}")
    print(f"events/s: {events / elapsed:,.0f}")
    print(f"response-frame latency ms: p50 {statistics.median(latencies):.1f}, p99 {p99:.1f}")
    await platform.close()
    await adapter.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    asyncio.run(main(parser.parse_args().events))
