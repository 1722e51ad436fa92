"""The feedback signing key: configured, or made once and kept in the store across restarts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from imrobots.feedback import FeedbackSigner, InvalidFeedback
from imrobots.models import FeedbackRating
from imrobots.sqlite_store import SQLiteStore
from imrobots.store import MemoryStore


def signed(signer: FeedbackSigner, robot: str = "support") -> str:
    return signer.values(robot, "msg-1")[FeedbackRating.HELPFUL]


async def test_the_key_survives_a_restart_with_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(path)
    try:
        before = await FeedbackSigner.for_robot(store, "support", None)
        value = signed(before)
    finally:
        await store.close()

    store = SQLiteStore(path)  # the process restarted
    try:
        after = await FeedbackSigner.for_robot(store, "support", None)
        assert after.verify(value).message_id == "msg-1"
        assert before.verify(signed(after)).rating is FeedbackRating.HELPFUL
        [stored] = (await store.scan_values("feedback-key:")).values()
        assert len(bytes.fromhex(stored)) == 32
    finally:
        await store.close()


async def test_two_processes_on_one_file_share_the_key(tmp_path: Path) -> None:
    first, second = SQLiteStore(tmp_path / "s.sqlite3"), SQLiteStore(tmp_path / "s.sqlite3")
    try:
        a = await FeedbackSigner.for_robot(first, "support", None)
        b = await FeedbackSigner.for_robot(second, "support", None)
        assert b.verify(signed(a)).robot == "support"
    finally:
        await first.close()
        await second.close()


async def test_each_robot_has_its_own_key() -> None:
    store = MemoryStore()
    support = await FeedbackSigner.for_robot(store, "support", None)
    sales = await FeedbackSigner.for_robot(store, "sales", None)
    with pytest.raises(InvalidFeedback, match="signature"):
        sales.verify(signed(support))
    assert sorted(await store.scan_values("feedback-key:")) == [
        "feedback-key:sales",
        "feedback-key:support",
    ]


async def test_with_the_memory_store_a_new_store_makes_a_new_key() -> None:
    """Documented: buttons survive restarts only with a persistent store or a secret."""
    before = await FeedbackSigner.for_robot(MemoryStore(), "support", None)
    after = await FeedbackSigner.for_robot(MemoryStore(), "support", None)
    with pytest.raises(InvalidFeedback):
        after.verify(signed(before))


@pytest.mark.parametrize("secret", ["configured-secret", b"configured-secret"])
async def test_a_configured_secret_is_used_and_nothing_is_stored(secret: str | bytes) -> None:
    store = MemoryStore()
    signer = await FeedbackSigner.for_robot(store, "support", secret)
    assert FeedbackSigner.from_secret("configured-secret").verify(signed(signer))
    assert await store.scan_values("") == {}


async def test_the_key_never_shows_in_a_repr() -> None:
    store = MemoryStore()
    signer = await FeedbackSigner.for_robot(store, "support", None)
    key = await store.get_value("feedback-key:support")
    assert key is not None
    assert key not in repr(signer) and "***" in repr(signer)
    assert key not in str(signer)


async def test_a_corrupt_stored_key_is_an_error_that_does_not_show_it() -> None:
    store = MemoryStore()
    await store.setdefault_value("feedback-key:support", "not-hex-secretish")
    with pytest.raises(ValueError, match="feedback-key:support") as info:
        await FeedbackSigner.for_robot(store, "support", None)
    assert "not-hex-secretish" not in str(info.value)


@pytest.mark.parametrize("message_id", ["msgAMVBzPulTJGBbGXvR5v4sQ==", 'a"b\\c\n€#2', "提问 ünï"])
def test_signed_values_are_unchanged_and_verify(message_id: str) -> None:
    """The values are byte for byte what the signer wrote before it skipped json.dumps
    (open cards keep working across the upgrade), and each verifies to its rating."""
    signer = FeedbackSigner.from_secret("k")
    for rating, value in signer.values("support", message_id).items():
        body = json.dumps(
            {"r": "support", "m": message_id, "t": rating.value},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        payload = base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()
        mac = hmac.new(b"k", payload.encode(), hashlib.sha256).digest()[:16]
        assert value == f"v1.{payload}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        token = signer.verify(value)
        assert (token.robot, token.message_id, token.rating) == ("support", message_id, rating)


@pytest.mark.parametrize("secret", ["", b""])
async def test_an_empty_secret_is_refused(secret: str | bytes) -> None:
    """An empty secret signed buttons with an empty HMAC key, which anyone can compute:
    ``RobotRuntime(feedback_secret=os.environ.get("SECRET", ""))`` made feedback
    forgeable."""
    with pytest.raises(ValueError, match="the feedback secret is empty"):
        FeedbackSigner.from_secret(secret)
    with pytest.raises(ValueError, match="the feedback secret is empty"):
        await FeedbackSigner.for_robot(MemoryStore(), "support", secret)


@pytest.mark.parametrize("value", ["", "  "])
def test_a_blank_feedback_secret_in_a_config_is_an_error(tmp_path: Path, value: str) -> None:
    """``feedback_secret = "{{IMROBOTS_FEEDBACK_SECRET}}"`` with the variable set to nothing
    passed check and was silently replaced by a key in the store (with the memory store,
    buttons then broke at every restart); blank, it signed with a key of spaces."""
    from click.testing import CliRunner

    from imrobots.cli import cli

    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.support]\nplatform = "memory"\n'
        'feedback_secret = "{{IMROBOTS_FEEDBACK_SECRET}}"\n'
        '[robots.support.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        cli, ["check", str(config)], env={"IMROBOTS_FEEDBACK_SECRET": value}
    )
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"error: {config}: robots.support.feedback_secret: is blank: give a secret, or "
        "leave the key out for a key kept in the store"
    ]
