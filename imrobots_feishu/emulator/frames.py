"""The long connection's wire frames and the event payloads Feishu pushes through it.

Frames are protobuf ``pbbp2.Frame`` messages (proto2) sent as **binary** WebSocket
messages (PROTOCOLS 3.2). The emulator encodes and decodes them itself with the small
codec below rather than importing lark-oapi's generated ``pbbp2_pb2``: the server side
then needs no SDK (importing ``lark_oapi`` takes seconds and creates an event loop at
import), and the SDK's own decoder checks this independent encoder in the tests
(``tests/feishu/test_emulator_sdk.py``).

``Frame {1 SeqID uint64, 2 LogID uint64, 3 service int32, 4 method int32,
5 headers repeated Header {1 key string, 2 value string}, 6 payload_encoding string,
7 payload_type string, 8 payload bytes, 9 LogIDNew string}``; fields 1-4 are
required and always written. ``method`` 0 is CONTROL (ping/pong), 1 is DATA.

Event payloads follow PROTOCOLS 3.6 (``im.message.receive_v1``) and 3.7
(``card.action.trigger``): schema 2.0 envelopes whose ``create_time`` is a string of
milliseconds (microseconds for card actions).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "CONTROL",
    "DATA",
    "Frame",
    "card_action_event",
    "decode_frame",
    "encode_frame",
    "message_event",
    "new_id",
]

CONTROL = 0
DATA = 1


@attrs.define(kw_only=True)
class Frame:
    """One ``pbbp2.Frame``."""

    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = CONTROL
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    payload_encoding: str | None = None
    payload_type: str | None = None
    payload: bytes | None = None
    log_id_new: str | None = None

    def header(self, key: str) -> str | None:
        """The value of header ``key`` (the last one, if repeated), or ``None``."""
        found = None
        for name, value in self.headers:
            if name == key:
                found = value
        return found


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # proto int32/int64 negatives: ten-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def encode_frame(frame: Frame) -> bytes:
    """Serialize ``frame`` as protobuf."""
    out = bytearray()
    for field, number in ((1, frame.seq_id), (2, frame.log_id), (3, frame.service)):
        out += _key(field, 0) + _varint(number)
    out += _key(4, 0) + _varint(frame.method)
    for name, value in frame.headers:
        header = _bytes_field(1, name.encode()) + _bytes_field(2, value.encode())
        out += _bytes_field(5, header)
    if frame.payload_encoding is not None:
        out += _bytes_field(6, frame.payload_encoding.encode())
    if frame.payload_type is not None:
        out += _bytes_field(7, frame.payload_type.encode())
    if frame.payload is not None:
        out += _bytes_field(8, frame.payload)
    if frame.log_id_new is not None:
        out += _bytes_field(9, frame.log_id_new.encode())
    return bytes(out)


class FrameError(ValueError):
    """Bytes that are not a ``pbbp2.Frame``."""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise FrameError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            fields.append((field, value))
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise FrameError("truncated field")
            fields.append((field, data[pos : pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise FrameError(f"unsupported wire type {wire}")
    return fields


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def decode_frame(data: bytes) -> Frame:
    """Parse protobuf bytes into a :class:`Frame`; raises :class:`FrameError`."""
    frame = Frame()
    seen: set[int] = set()
    for field, value in _fields(data):
        seen.add(field)
        if isinstance(value, int):
            if field == 1:
                frame.seq_id = value
            elif field == 2:
                frame.log_id = value
            elif field == 3:
                frame.service = _signed32(value)
            elif field == 4:
                frame.method = _signed32(value)
        elif field == 5:
            header = dict(_fields(value))
            key, val = header.get(1), header.get(2)
            if not isinstance(key, bytes) or not isinstance(val, bytes):
                raise FrameError("header without key or value")
            frame.headers.append((key.decode(), val.decode()))
        elif field == 6:
            frame.payload_encoding = value.decode()
        elif field == 7:
            frame.payload_type = value.decode()
        elif field == 8:
            frame.payload = value
        elif field == 9:
            frame.log_id_new = value.decode()
    missing = {1, 2, 3, 4} - seen
    if missing:
        raise FrameError(f"missing required fields {sorted(missing)}")
    return frame


def new_id(prefix: str) -> str:
    """An id shaped like Feishu's (``om_...``, ``oc_...``): prefix and 32 hex digits."""
    return f"{prefix}{uuid.uuid4().hex}"


def _ms(at: float | None = None) -> str:
    return str(int((time.time() if at is None else at) * 1000))


def message_event(
    *,
    app_id: str,
    tenant_key: str,
    verification_token: str,
    message_id: str,
    chat_id: str,
    chat_type: str,
    sender_open_id: str,
    message_type: str,
    content: Mapping[str, Any],
    mentions: Sequence[Mapping[str, Any]] = (),
    parent_id: str | None = None,
    root_id: str | None = None,
    thread_id: str | None = None,
    event_id: str | None = None,
    at: float | None = None,
) -> dict[str, Any]:
    """An ``im.message.receive_v1`` envelope (PROTOCOLS 3.6)."""
    created = _ms(at)
    message: dict[str, Any] = {
        "message_id": message_id,
        "root_id": root_id or parent_id or "",
        "parent_id": parent_id or "",
        "create_time": created,
        "update_time": created,
        "chat_id": chat_id,
        "chat_type": chat_type,
        "message_type": message_type,
        "content": json.dumps(content, ensure_ascii=False),
        "user_agent": "imrobots-emulator",
    }
    if thread_id:
        message["thread_id"] = thread_id
    if mentions:
        message["mentions"] = [dict(m) for m in mentions]
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id or uuid.uuid4().hex,
            "event_type": "im.message.receive_v1",
            "create_time": created,
            "token": verification_token,
            "app_id": app_id,
            "tenant_key": tenant_key,
        },
        "event": {
            "sender": {
                "sender_id": {
                    "union_id": f"on_{sender_open_id}",
                    "user_id": sender_open_id,
                    "open_id": sender_open_id,
                },
                "sender_type": "user",
                "tenant_key": tenant_key,
            },
            "message": message,
        },
    }


def card_action_event(
    *,
    app_id: str,
    tenant_key: str,
    verification_token: str,
    operator_open_id: str,
    message_id: str,
    chat_id: str,
    value: Any,
    tag: str = "button",
    name: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A ``card.action.trigger`` envelope (PROTOCOLS 3.7; ``create_time`` in microseconds)."""
    action: dict[str, Any] = {"value": value, "tag": tag}
    if name:
        action["name"] = name
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id or uuid.uuid4().hex,
            "token": verification_token,
            "create_time": str(int(time.time() * 1_000_000)),
            "event_type": "card.action.trigger",
            "tenant_key": tenant_key,
            "app_id": app_id,
        },
        "event": {
            "operator": {
                "tenant_key": tenant_key,
                "user_id": operator_open_id,
                "open_id": operator_open_id,
                "union_id": f"on_{operator_open_id}",
            },
            "token": new_id("c-"),
            "action": action,
            "host": "im_message",
            "context": {"open_message_id": message_id, "open_chat_id": chat_id},
        },
    }
