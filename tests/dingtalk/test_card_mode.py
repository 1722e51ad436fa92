"""Card mode for new apps (issue 9): DingTalk closed the StandardCard APIs to apps created
after 2024-12-31, yet ``standard`` was the default, so a new app with only its
credentials got no card. The default is now ``ai`` on DingTalk's built-in AI card template
(the one the official SDK's ``AIMarkdownCardInstance`` uses), which needs no template of
one's own; ``imrobots check`` says which mode a robot uses and why."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from imrobots import FeedbackRating, Secret
from imrobots.app import build_runtimes
from imrobots.config import check_config
from imrobots.plugins import PluginManager
from imrobots_dingtalk.cards import ai_card_params
from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.platform import BUILTIN_AI_TEMPLATE, DingTalkSettings

from .support import APP, QUESTION, cards_for, final, running


def test_the_default_is_the_mode_a_new_app_can_use() -> None:
    """Before: ``card_mode == "standard"`` (StandardCard, refused to new apps)."""
    settings = DingTalkSettings(client_id="dingnew", client_secret=Secret("s"))
    assert settings.card_mode == "ai"
    assert settings.ai_template_id == BUILTIN_AI_TEMPLATE
    assert BUILTIN_AI_TEMPLATE == "382e4302-551d-4880-bf29-a30acfab2e71.schema"
    assert settings.builtin_template


def test_the_builtin_template_gets_its_own_variables() -> None:
    """The built-in template binds the SDK's variables: ``msgTitle``, ``msgContent``,
    ``flowStatus`` and buttons in ``sys_full_json_obj.msgButtons`` (``request`` buttons
    whose press calls back over Stream with the button's ``value``)."""
    from imrobots import Actions, Button, Card, CardStatus, Markdown

    card = Card(
        title=QUESTION,
        elements=(
            Markdown(text="the answer"),
            Actions(buttons=(Button(id="b1", label="Helpful", value="v1.sig", style="primary"),)),
        ),
        status=CardStatus.FINAL,
    )
    params = ai_card_params(card, content_key="msgContent", builtin=True)
    assert params["msgTitle"] == QUESTION and params["msgContent"] == "the answer"
    assert params["flowStatus"] == "3"
    assert "title" not in params and "buttons" not in params
    full = json.loads(params["sys_full_json_obj"])
    assert full["order"] == ["msgTitle", "msgContent", "msgButtons"]
    (button,) = full["msgButtons"]
    assert button == {
        "text": "Helpful",
        "color": "blue",
        "id": "b1",
        "request": True,
        "params": {"value": "v1.sig"},
    }
    assert all(isinstance(v, str) for v in params.values())


async def test_a_robot_with_only_its_credentials_answers_in_an_ai_card(
    emu: DingTalkEmulator,
) -> None:
    """No ``card_mode``, no template: the answer streams into an AI card on the built-in
    template, ends final with the four feedback buttons, and a press is stored."""
    async with running(emu, card_mode=None) as runtime:
        pushed = await emu.push_message(APP, text=QUESTION, sender_staff_id="staff7")
        await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, pushed)), 10)
        (card,) = cards_for(emu, pushed)
        assert card.kind == "instance" and card.template_id == BUILTIN_AI_TEMPLATE
        assert card.view["title"] == QUESTION and card.view["status"] == "finished"
        assert "refund" in (card.view["markdown"] or "")
        assert [b["label"] for b in card.view["buttons"]] == [r.label for r in FeedbackRating]
        assert not any(c.route.startswith("interactiveCards.") for c in emu.calls)
        button = card.view["buttons"][1]
        await emu.press_button(
            APP,
            card_id=card.card_id,
            action_id=button["id"],
            params={"value": button["value"]},
            user_id="staff7",
        )
        await emu.wait_for(lambda: runtime.stats.feedback == 1, 5, what="feedback stored")
    stored = await runtime.store.list_feedback(robot="support")
    assert [f.rating for f in stored] == [FeedbackRating.HELPFUL]


def _check(tmp_path: Path, settings: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "robots.toml"
    path.write_text(
        '[robots.bot]\nplatform = "dingtalk"\n[robots.bot.settings]\n'
        'client_id = "dingabc"\nclient_secret = "very-secret"\n'
        + settings
        + '[robots.bot.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    env: dict[str, Any] = {**os.environ, "IMROBOTS_LOAD_PLUGINS": "dingtalk"}
    return subprocess.run(
        [sys.executable, "-m", "imrobots", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )


def _notes(caplog: pytest.LogCaptureFixture, app: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "imrobots_dingtalk" and r.getMessage().startswith(f"dingtalk app {app}: ")
    ]


def test_run_says_the_card_mode_once(
    manager: PluginManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What ``imrobots run`` does before connecting: check the file, then build the robots.
    Both convert the settings; the card mode line was logged twice."""
    import imrobots_dingtalk.plugin

    manager.register(imrobots_dingtalk.plugin, name="dingtalk")
    app = f"dingonce{uuid.uuid4().hex[:8]}"  # this process has not seen it
    path = tmp_path / "robots.toml"
    path.write_text(
        f'[robots.bot]\nplatform = "dingtalk"\n[robots.bot.settings]\nclient_id = "{app}"\n'
        'client_secret = "very-secret"\n[robots.bot.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    with caplog.at_level(logging.INFO, logger="imrobots_dingtalk"):
        result = check_config(path, manager=manager)
        assert result.errors == () and result.config is not None
        [runtime] = build_runtimes(result.config, manager=manager)
        assert runtime.platform.name == "dingtalk"
        # a program that makes the app's settings once more says nothing new either
        DingTalkSettings(client_id=app, client_secret=Secret("s"))
    [note] = _notes(caplog, app)
    assert "built-in AI card template" in note

    # another app, or another card mode of the same app, is news: said once each
    other = f"{app}x"
    with caplog.at_level(logging.INFO, logger="imrobots_dingtalk"):
        caplog.clear()
        for _ in range(2):
            DingTalkSettings(client_id=other, client_secret=Secret("s"))
            DingTalkSettings(client_id=app, client_secret=Secret("s"), card_mode="standard")
    assert len(_notes(caplog, other)) == 1
    [standard] = _notes(caplog, app)
    assert 'card_mode = "standard"' in standard


def test_check_says_which_card_mode_and_why(tmp_path: Path) -> None:
    result = _check(tmp_path, "")
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "AI cards" in said and "built-in AI card template" in said
    assert "2024-12-31" in said
    assert "very-secret" not in said


def test_check_warns_that_standard_cards_are_closed_to_new_apps(tmp_path: Path) -> None:
    result = _check(tmp_path, 'card_mode = "standard"\n')
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "WARNING" in said and "StandardCard" in said and "2024-12-31" in said
    assert 'card_mode = "ai"' in said


def test_check_names_a_custom_template(tmp_path: Path) -> None:
    result = _check(tmp_path, 'ai_template_id = "mine-123.schema"\n')
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "mine-123.schema" in said and "title, msgContent, flowStatus, buttons" in said
