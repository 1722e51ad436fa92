"""Feedback buttons: forgeries rejected; valid presses stored, hooked and exported."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from imrobots.cards import Card, CardStatus
from imrobots.cli import cli
from imrobots.exporting import write_feedback
from imrobots.feedback import FeedbackSigner, FeedbackToken, InvalidFeedback
from imrobots.memory import MemoryCard, MemoryPlatform
from imrobots.models import Feedback, FeedbackRating
from imrobots.robot import Robot
from imrobots.runtime import RobotRuntime
from imrobots.sqlite_store import SQLiteStore

from .conftest import FAST, Factory, Recorder, answer_cards

SECRET = "test-secret"


class FeedbackRobot(Robot):
    """Streams a fixed answer and keeps the feedback it is given."""

    def __init__(self) -> None:
        super().__init__(agent=lambda request: f"Refunds take 5 days ({request.text}).")
        self.given: list[Feedback] = []

    async def on_feedback(self, feedback: Feedback) -> None:
        self.given.append(feedback)


async def _answered(
    make_runtime: Factory, hooks: Recorder
) -> tuple[MemoryPlatform, RobotRuntime, FeedbackRobot, MemoryCard]:
    robot = FeedbackRobot()
    platform, runtime = await make_runtime(
        robot=robot, hooks=hooks, feedback_secret=SECRET, name="support", **FAST
    )
    message = await platform.say("How do I get a refund?", message_id="m-1")
    await runtime.wait_idle(timeout=5)
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.FINAL
    return platform, runtime, robot, card


def _value(card: MemoryCard, rating: FeedbackRating) -> str:
    current = card.current
    assert isinstance(current, Card)
    [button] = [b for b in current.buttons if b.label == rating.label]
    return button.value


def _altered(value: str) -> str:
    """The same value with its rating changed and the signature kept."""
    prefix, payload, mac = value.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["t"] = FeedbackRating.NO_HELP.value
    body = json.dumps(data, separators=(",", ":")).encode()
    forged = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
    return f"{prefix}.{forged}.{mac}"


async def test_a_valid_press_is_stored_hooked_and_given_to_the_robot(
    make_runtime: Factory,
) -> None:
    hooks = Recorder()
    platform, runtime, robot, card = await _answered(make_runtime, hooks)
    await platform.press(card.id, FeedbackRating.HELPFUL, sender="user-7")
    await runtime.wait_idle(timeout=5)

    [stored] = await runtime.store.list_feedback()
    assert stored.rating is FeedbackRating.HELPFUL and stored.helpful
    assert stored.robot == "support" and stored.message_id == "m-1"
    assert stored.sender.id == "user-7"
    assert stored.question == "How do I get a refund?"
    assert stored.answer == card.text
    assert stored.card_id == card.id
    assert robot.given == [stored]
    assert hooks.feedback == [stored]
    assert runtime.stats.feedback == 1 and runtime.stats.forged == 0


async def test_pressing_twice_is_recorded_once(make_runtime: Factory) -> None:
    hooks = Recorder()
    platform, runtime, robot, card = await _answered(make_runtime, hooks)
    await platform.press(card.id, FeedbackRating.HELPFUL)
    await platform.press(card.id, FeedbackRating.HELPFUL)
    await runtime.wait_idle(timeout=5)
    assert len(await runtime.store.list_feedback()) == 1
    assert len(robot.given) == 1 and len(hooks.feedback) == 1


def _forgeries(valid: str) -> dict[str, str]:
    token = FeedbackToken(robot="support", message_id="m-1", rating=FeedbackRating.NO_HELP)
    prefix, payload, mac = valid.split(".")
    return {
        "altered rating": _altered(valid),
        "other secret": FeedbackSigner.from_secret("guessed").sign(token),
        "other robot": FeedbackSigner.from_secret(SECRET).sign(
            FeedbackToken(robot="billing", message_id="m-1", rating=FeedbackRating.NO_HELP)
        ),
        "truncated signature": f"{prefix}.{payload}.{mac[:-2]}",
        "garbage": "v1.not-base64!.nope",
        "missing part": f"{prefix}.{payload}",
    }


@pytest.mark.parametrize(
    "kind",
    [
        "altered rating",
        "other secret",
        "other robot",
        "truncated signature",
        "garbage",
        "missing part",
    ],
)
async def test_a_forged_or_altered_value_is_rejected(
    make_runtime: Factory, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    hooks = Recorder()
    platform, runtime, robot, card = await _answered(make_runtime, hooks)
    forged = _forgeries(_value(card, FeedbackRating.VERY_HELPFUL))[kind]
    with caplog.at_level(logging.WARNING, logger="imrobots.runtime"):
        await platform.press(card.id, FeedbackRating.VERY_HELPFUL, value=forged)
        await runtime.wait_idle(timeout=5)

    assert runtime.stats.forged == 1
    assert runtime.stats.feedback == 0
    assert await runtime.store.list_feedback() == []
    assert robot.given == [] and hooks.feedback == []
    assert any("rejected feedback" in r.getMessage() for r in caplog.records)
    # the genuine button still works afterwards
    await platform.press(card.id, FeedbackRating.VERY_HELPFUL)
    await runtime.wait_idle(timeout=5)
    [stored] = await runtime.store.list_feedback()
    assert stored.rating is FeedbackRating.VERY_HELPFUL


async def test_stored_feedback_is_exported(make_runtime: Factory) -> None:
    hooks = Recorder()
    platform, runtime, _, card = await _answered(make_runtime, hooks)
    await platform.press(card.id, FeedbackRating.NOT_MUCH_HELP)
    await runtime.wait_idle(timeout=5)

    out = io.StringIO(newline="")
    assert write_feedback(await runtime.store.list_feedback(), "csv", out) == 1
    [row] = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["message_id"] == "m-1"
    assert row["rating"] == "not_much_help" and row["helpful"] == "false"
    assert row["question"] == "How do I get a refund?"
    assert row["answer"] == card.text


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """The CLI group installs its own log handler on the root logger; put pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_feedback_export_cli_reads_the_sqlite_store(
    tmp_path: Path, keep_logging: None
) -> None:
    database = tmp_path / "state.sqlite3"
    store = SQLiteStore(database)
    platform = MemoryPlatform()
    robot = FeedbackRobot()
    runtime = RobotRuntime(
        name="support", robot=robot, platform=platform, store=store, feedback_secret=SECRET
    )
    await runtime.start()
    try:
        message = await platform.say("How do I get a refund?", message_id="m-1")
        await runtime.wait_idle(timeout=5)
        [card] = answer_cards(platform, message)
        await platform.press(card.id, FeedbackRating.VERY_HELPFUL, sender="user-9")
        await runtime.wait_idle(timeout=5)
        assert len(robot.given) == 1
    finally:
        await runtime.stop()
        await store.close()

    config = tmp_path / "robots.toml"
    config.write_text(
        f'[store]\nbackend = "sqlite"\npath = {json.dumps(str(database))}\n\n'
        '[robots.support]\nplatform = "memory"\n',
        encoding="utf-8",
    )
    # the command runs its own event loop: give it a thread of its own
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["feedback", "export", "--config", str(config), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [(r["message_id"], r["rating"], r["sender_id"]) for r in records] == [
        ("m-1", "very_helpful", "user-9")
    ]
    assert records[0]["answer"] == card.text
    assert "exported 1 feedback record" in result.stderr


def test_an_answers_button_values_are_the_values_signed_before() -> None:
    """values() writes the JSON around the rating once per answer and reuses a keyed
    HMAC: the values must stay byte for byte what signing each button's token gave
    (buttons already sent keep verifying; the scheme in docs/ is unchanged)."""
    signer = FeedbackSigner.from_secret(SECRET)
    values = signer.values("support", 'msg"1', conversation="cid群=", card="c1")
    # made by the code before the change, for these fields
    assert values[FeedbackRating.HELPFUL] == (
        "v1.eyJyIjoic3VwcG9ydCIsIm0iOiJtc2dcIjEiLCJ0IjoiaGVscGZ1bCIsImMiOiJjaWTnvqQ9Ii"
        "wiayI6ImMxIn0.b_wEfeCiGvhqQwXnFLyJhQ"
    )
    assert values[FeedbackRating.NO_HELP] == (
        "v1.eyJyIjoic3VwcG9ydCIsIm0iOiJtc2dcIjEiLCJ0Ijoibm9faGVscCIsImMiOiJjaWTnvqQ9Ii"
        "wiayI6ImMxIn0.bewOI26E8-dnySFI1P-UgQ"
    )
    cases = [
        ("r", "m", None, None, None),
        ("robot", "id#2", "", "u1", None),
        ("r\\x", "\u2028\x00é", "cid", None, "k" * 64),
        ("r", "m", "c", "u", "k"),
    ]
    for robot, message_id, conversation, user, card in cases:
        values = signer.values(robot, message_id, conversation=conversation, user=user, card=card)
        assert list(values) == list(FeedbackRating)
        for rating, value in values.items():
            token = FeedbackToken(
                robot=robot,
                message_id=message_id,
                rating=rating,
                conversation=conversation,
                user=user,
                card=card,
            )
            assert value == signer.sign(token)
            assert signer.verify(value) == token
        other = FeedbackSigner.from_secret(SECRET + "x")
        with pytest.raises(InvalidFeedback):
            other.verify(values[FeedbackRating.HELPFUL])
