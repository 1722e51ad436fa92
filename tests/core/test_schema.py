"""`imrobots config schema`: a JSON Schema that accepts every example config and refuses
broken ones, as `imrobots check` does."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from imrobots.cli import cli
from imrobots.plugins import PluginManager
from imrobots.schema import config_schema

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("dingtalk_stream")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    p for p in (ROOT / "examples").rglob("*") if p.suffix in (".toml", ".json") and p.is_file()
)


def _read(path: Path) -> Any:
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return tomllib.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def plugins() -> PluginManager:
    """Every installed plugin, as a user's `imrobots config schema` sees them."""
    return PluginManager(load_entry_points=True)


@pytest.fixture
def validator(plugins: PluginManager) -> Any:
    schema = config_schema(plugins)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_there_are_examples_to_validate() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"robots.toml", "emulator.toml", "config.json"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_config_is_valid(validator: Any, plugins: PluginManager, path: Path) -> None:
    data = _read(path)
    available = {n for n, status in plugins.platforms().items() if status.available}
    wanted = {r.get("platform") for r in data.get("robots", {}).values()} - {None}
    if "robots" not in data:
        wanted = {data.get("platform", "dingtalk")}
    if not wanted <= available:
        pytest.skip(f"needs platforms {sorted(wanted - available)}, not available here")
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []


def _support() -> dict[str, Any]:
    return copy.deepcopy(_read(ROOT / "examples" / "dingtalk_support" / "robots.toml"))


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return data


BROKEN: dict[str, Any] = {
    "unknown top-level key": lambda d: _set(d, "stor", {"backend": "memory"}),
    "unknown robot key": lambda d: _set(d, "robots.support.strem", {}),
    "unknown setting (typo)": lambda d: _set(d, "robots.support.settings.card_mdoe", "ai"),
    "setting of the wrong type": lambda d: _set(d, "robots.support.settings.app_rate", "fast"),
    "card mode not one of the choices": lambda d: _set(
        d, "robots.support.settings.card_mode", "fancy"
    ),
    "missing credentials": lambda d: d["robots"]["support"]["settings"].pop("client_secret") and d,
    "negative min_interval": lambda d: _set(d, "robots.support.stream.min_interval", -1),
    "zero max_updates": lambda d: _set(d, "robots.support.stream.max_updates", 0),
    "zero max_concurrent": lambda d: _set(d, "robots.support.options.max_concurrent", 0),
    "strategy not one of the choices": lambda d: _set(
        d, "robots.support.options.strategy", "sometimes"
    ),
    "string for a boolean": lambda d: _set(d, "robots.support.policy.require_mention", "false"),
    "string for a list": lambda d: _set(d, "robots.support.policy.deny_users", "mallory"),
    "unknown platform": lambda d: _set(d, "robots.support.platform", "icq"),
    "no platform": lambda d: d["robots"]["support"].pop("platform") and d,
    "unknown demo agent setting": lambda d: _set(d, "robots.support.agent.dealy", 0),
    "no robots": lambda d: {"store": {"backend": "memory"}},
    "unknown store backend": lambda d: _set(d, "store.backend", "postgres"),
}


@pytest.mark.parametrize("change", sorted(BROKEN))
def test_broken_configs_are_refused(validator: Any, change: str) -> None:
    broken = BROKEN[change](_support())
    assert not validator.is_valid(broken)


def test_a_broken_seed_config_json_is_refused(validator: Any) -> None:
    seed = _read(ROOT / "examples" / "dingtalk_support" / "config.json")
    assert validator.is_valid(seed)
    assert not validator.is_valid({k: v for k, v in seed.items() if k != "clientSecret"})
    assert not validator.is_valid({**seed, "clientSceret": "x"})


def test_placeholders_may_stand_for_a_choice(validator: Any) -> None:
    data = _set(_support(), "robots.support.settings.card_mode", "{{DINGTALK_CARD_MODE}}")
    assert validator.is_valid(data)


def test_descriptions_come_from_the_field_docstrings(manager: PluginManager) -> None:
    schema = config_schema(manager)
    agent_timeout = schema["definitions"]["StreamPolicy"]["properties"]["agent_timeout"]
    assert agent_timeout["description"].startswith("Seconds an answer may take")
    assert agent_timeout["exclusiveMinimum"] == 0


def test_the_command_prints_the_schema_and_writes_a_file(
    manager: PluginManager, tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, ["config", "schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "MemorySettings" in schema["definitions"]
    target = tmp_path / "robots.schema.json"
    result = CliRunner().invoke(cli, ["config", "schema", "-o", str(target)])
    assert result.exit_code == 0
    assert json.loads(target.read_text(encoding="utf-8")) == schema
