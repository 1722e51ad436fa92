"""The engine's pages stay true: their config snippets load, and every option is documented."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from imrobots.config import load_config
from imrobots.policy import AccessPolicy
from imrobots.runtime import RuntimeOptions
from imrobots.streaming import StreamPolicy

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ["streaming.md", "inbound.md"]


def _snippets(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("page", PAGES)
def test_every_config_snippet_loads(page: str, tmp_path: Path) -> None:
    snippets = _snippets(page)
    assert snippets, f"{page} has no TOML example"
    for number, snippet in enumerate(snippets):
        path = tmp_path / f"snippet{number}.toml"
        path.write_text(snippet, encoding="utf-8")
        config = load_config(path)  # raises ConfigError naming the bad field
        robot = config.robots["support"]
        assert isinstance(robot.options, RuntimeOptions)
        assert isinstance(robot.policy, AccessPolicy)


def test_the_seed_snippet_is_the_seed_policy(tmp_path: Path) -> None:
    [seed] = [s for s in _snippets("streaming.md") if "min_chunks = 5\nmax_updates = 20" in s]
    path = tmp_path / "seed.toml"
    path.write_text(seed, encoding="utf-8")
    assert load_config(path).robots["support"].options.stream == StreamPolicy.seed()


@pytest.mark.parametrize(
    ("page", "cls", "skip"),
    [("streaming.md", StreamPolicy, set()), ("inbound.md", RuntimeOptions, {"stream"})],
)
def test_every_field_is_documented(page: str, cls: type, skip: set[str]) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    for field in attrs.fields(cls):
        if field.name not in skip:
            assert f"`{field.name}`" in text, f"{page} does not document {field.name}"
