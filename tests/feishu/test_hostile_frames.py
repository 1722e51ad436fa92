"""Hostile events on the Feishu long connection (issue 12, item 9 applied to Feishu), sent
by the emulator over the live connection: each is answered (Feishu would redeliver an
unanswered one) and dropped with a warning, the connection stays up, nothing logs a
traceback, and another conversation is answered."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from imrobots.config import structure
from imrobots.platform import CardAction, Message

pytest.importorskip("lark_oapi")

from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.emulator.frames import message_event
from imrobots_feishu.platform import FeishuPlatform, FeishuSettings

from ..fuzzing import deep


async def test_hostile_events_are_answered_and_the_connection_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    adapter = FeishuConsoleAdapter()
    await adapter.start()
    emulator = adapter.emulator
    platform = FeishuPlatform(structure(adapter.robot_settings(), FeishuSettings, path="feishu"))
    seen: list[Message | CardAction] = []

    async def sink(event: Message | CardAction) -> None:
        seen.append(event)

    def envelope(**changes: object) -> dict[str, object]:
        event = message_event(
            app_id=adapter.app_id,
            tenant_key="t",
            verification_token="v",
            message_id="om_hostile",
            chat_id="oc_hostile",
            chat_type="group",
            sender_open_id="ou_1",
            message_type="text",
            content={"text": "hello"},
        )
        event["event"]["message"].update(changes)  # type: ignore[index]
        return event

    hostile = [
        b"not json",
        b"\xff\xfe not utf-8",
        deep().encode(),
        json.dumps(envelope(message_id="om_\ud800")).encode(),
        # a surrogate encoded raw (not valid UTF-8; json decodes it with surrogatepass)
        json.dumps(envelope(message_id="om_RAW")).encode().replace(b"RAW", b"\xed\xa0\x80"),
        json.dumps(envelope(content=deep())).encode(),
        json.dumps(envelope(create_time=str(10**30), message_id="om_time")).encode(),
        json.dumps([1, 2]).encode(),
    ]
    try:
        await platform.start(sink)
        connection = platform.connection
        assert connection is not None
        deliveries = [
            emulator.deliver(adapter.app_id, {"header": {"event_id": f"ev-h{i}"}}, raw=raw)
            for i, raw in enumerate(hostile)
        ]
        for delivery in deliveries:
            assert delivery.done is not None
            answer = await asyncio.wait_for(delivery.done, 3.0)
            assert answer["code"] == 200
        _, bystander = emulator.push_message(
            adapter.app_id,
            chat_id="oc_bystander",
            chat_type="p2p",
            sender="ou_2",
            message_type="text",
            content={"text": "are you there?"},
        )
        assert bystander.done is not None
        assert (await asyncio.wait_for(bystander.done, 3.0))["code"] == 200
        await emulator.wait_for(lambda: any(m.id != "om_time" for m in seen))
        assert connection.connects == 1
        # only the out-of-range time (taken as now) and the bystander became messages
        assert {e.id for e in seen} <= {"om_time", bystander_id(seen)}
        # the others are counted as rejected (the stop summary, /metrics)
        assert platform.connection_status.rejections == len(hostile) - 1
    finally:
        await platform.close()
        await adapter.stop()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def bystander_id(seen: list[Message | CardAction]) -> str:
    return next(e.id for e in seen if isinstance(e, Message) and e.text == "are you there?")
