"""Config loading: placeholders, one-line errors naming the problem, secrets kept secret."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
from cattrs.errors import AttributeValidationNote, ClassValidationError
from click.testing import CliRunner

import imrobots
from imrobots.app import build_runtimes, prepare_robot
from imrobots.cli import cli
from imrobots.config import ConfigProblems, load_config, structure_problems
from imrobots.errors import ConfigError
from imrobots.plugins import PluginError, PluginManager

GOOD = """
[store]
backend = "memory"

[robots.support]
robot = "support"
platform = "memory"
feedback_secret = "{{FEEDBACK_SECRET}}"

[robots.support.settings]
app_id = "{{APP_ID}}"
quota = 20

[robots.support.agent]
use = "demo"
delay = 0

[robots.support.policy]
require_mention = true
deny_users = ["mallory"]

[robots.support.policy.group_overrides.open-group]
require_mention = false

[robots.support.options]
strategy = "queue"
max_concurrent = 10

[robots.support.stream]
min_interval = 2.0
min_chunks = 5
max_updates = 20
"""

ENV = {"FEEDBACK_SECRET": "s3cr3t-value", "APP_ID": "app-1"}


def write(tmp_path: Path, text: str, name: str = "robots.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_config_loads_and_builds(tmp_path: Path, manager: PluginManager) -> None:
    config = load_config(write(tmp_path, GOOD), env=ENV)
    robot = config.robots["support"]
    assert robot.platform == "memory"
    assert robot.settings == {"app_id": "app-1", "quota": 20}
    assert robot.options.stream is not None and robot.options.stream.min_chunks == 5
    assert robot.policy.group_overrides["open-group"].require_mention is False
    assert robot.policy.deny_users == ("mallory",)
    assert robot.feedback_secret is not None and robot.feedback_secret.get() == "s3cr3t-value"
    [runtime] = build_runtimes(config, manager=manager)
    assert runtime.platform.describe() == "memory (in-process, app app-1)"


def test_secrets_never_appear_in_reprs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env=ENV)
    assert "s3cr3t-value" not in repr(config)
    assert "s3cr3t-value" not in str(config.robots["support"].feedback_secret)


def test_secrets_stay_wrapped_when_config_is_turned_into_data(tmp_path: Path) -> None:
    """attrs.asdict / cattrs unstructure / f-strings must not copy a secret's value out."""
    import attrs
    import cattrs

    config = load_config(write(tmp_path, GOOD), env=ENV)
    robot = config.robots["support"]
    for data in (attrs.asdict(robot), cattrs.Converter().unstructure(robot)):
        assert "s3cr3t-value" not in repr(data)
    assert "s3cr3t-value" not in f"{robot.feedback_secret}"
    assert robot.feedback_secret == type(robot.feedback_secret)("s3cr3t-value")


def test_missing_environment_variable_names_it_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"APP_ID": "x"})
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "FEEDBACK_SECRET" in message
    assert "robots.support.feedback_secret" in message


def test_wrong_type_names_the_field_path(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("max_concurrent = 10", 'max_concurrent = "ten"'))
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    message = str(info.value)
    assert "\n" not in message
    assert "robots.support.options.max_concurrent" in message and "expected int" in message


def test_booleans_are_not_coerced_from_strings(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("require_mention = true", 'require_mention = "false"'))
    with pytest.raises(ConfigError, match=r"robots.support.policy.require_mention: expected bool"):
        load_config(path, env=ENV)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('strategy = "queue"', 'strategy = "queue"\nstrategi = 1'))
    with pytest.raises(ConfigError, match=r"robots.support.options: unknown key: strategi"):
        load_config(path, env=ENV)


def test_bad_literal_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('strategy = "queue"', 'strategy = "sometimes"'))
    with pytest.raises(ConfigError, match=r"robots.support.options.strategy"):
        load_config(path, env=ENV)


def test_unknown_platform_is_one_clear_line(tmp_path: Path, manager: PluginManager) -> None:
    config = load_config(
        write(tmp_path, GOOD.replace('platform = "memory"', 'platform = "icq"')), env=ENV
    )
    with pytest.raises(ConfigError) as info:
        prepare_robot(config.robots["support"], source="robots.toml", manager=manager)
    message = str(info.value)
    assert "\n" not in message
    assert "robots.support.platform" in message and "unknown platform 'icq'" in message
    assert "memory" in message


def test_unknown_robot_is_one_clear_line(tmp_path: Path, manager: PluginManager) -> None:
    config = load_config(
        write(tmp_path, GOOD.replace('robot = "support"', 'robot = "helpdesk"')), env=ENV
    )
    with pytest.raises(ConfigError) as info:
        prepare_robot(config.robots["support"], source="robots.toml", manager=manager)
    message = str(info.value)
    assert "\n" not in message
    assert "robots.support.robot" in message and "unknown robot 'helpdesk'" in message
    assert "support" in message


def test_platform_settings_are_validated_with_path(tmp_path: Path, manager: PluginManager) -> None:
    config = load_config(write(tmp_path, GOOD.replace("quota = 20", 'quota = "lots"')), env=ENV)
    with pytest.raises(ConfigError, match=r"robots\.support\.settings\.quota: expected"):
        prepare_robot(config.robots["support"], source="robots.toml", manager=manager)


def test_unknown_agent_and_bad_import(tmp_path: Path, manager: PluginManager) -> None:
    config = load_config(write(tmp_path, GOOD.replace('use = "demo"', 'use = "magic"')), env=ENV)
    with pytest.raises(ConfigError, match=r"robots.support.agent.use: unknown agent 'magic'"):
        prepare_robot(config.robots["support"], source="robots.toml", manager=manager)
    config = load_config(
        write(tmp_path, GOOD.replace('use = "demo"\ndelay = 0', 'use = "no_such_mod:agent"')),
        env=ENV,
    )
    with pytest.raises(ConfigError, match="cannot import 'no_such_mod:agent'"):
        prepare_robot(config.robots["support"], source="robots.toml", manager=manager)


_BROKEN_MODULES = {
    "nc_syntax": "from imrobots import Robot\nclass R(Robot)\n    pass\n",
    "nc_raises": "raise RuntimeError('not configured yet')\n",
    "nc_agents": (
        "class Agent:\n"
        "    def __init__(self, model: str) -> None:\n"
        "        self.model = model\n"
        "    def __call__(self, request: object) -> str:\n"
        "        return self.model\n"
        "VALUE = 3\n"
    ),
}


@pytest.mark.parametrize(
    ("robot", "agent", "expected"),
    [
        (
            "nc_syntax:R",
            'use = "demo"',
            r"robots\.x\.robot: cannot import 'nc_syntax:R': syntax error in .*nc_syntax\.py, "
            r"line 2: expected ':'",
        ),
        (
            "nc_raises:R",
            'use = "demo"',
            r"robots\.x\.robot: cannot import 'nc_raises:R': its module raised RuntimeError: "
            r"not configured yet",
        ),
        (
            "support",
            'use = "nc_raises:agent"',
            r"robots\.x\.agent\.use: cannot import 'nc_raises:agent': its module raised",
        ),
        ("support", 'use = ":"', r"robots\.x\.agent\.use: cannot import ':': expected"),
        (
            "support",
            'use = "nc_agents:Agent"\nmodle = "m"',
            r"robots\.x\.agent: 'nc_agents:Agent' refused its settings: .*'modle'",
        ),
        (
            "support",
            'use = "nc_agents:Agent"',
            r"robots\.x\.agent: 'nc_agents:Agent' refused its settings: .*'model'",
        ),
        (
            "support",
            'use = "nc_agents:VALUE"',
            r"robots\.x\.agent\.use: 'nc_agents:VALUE' is not an agent: ",
        ),
    ],
)
def test_a_robot_or_agent_module_with_an_error_is_one_line_of_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, robot: str, agent: str, expected: str
) -> None:
    for name, code in _BROKEN_MODULES.items():
        (tmp_path / f"{name}.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in _BROKEN_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    path = write(
        tmp_path,
        f'[robots.x]\nrobot = "{robot}"\nplatform = "memory"\n\n[robots.x.agent]\n{agent}\n',
    )
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert re.search(expected, errors[0]), errors[0]


def test_a_config_that_is_not_utf8_is_one_line_and_a_bom_is_skipped(tmp_path: Path) -> None:
    latin = tmp_path / "robots.toml"
    latin.write_bytes(b'[robots.x]\nplatform = "memory"\n# caf\xe9\n')
    with pytest.raises(ConfigError, match=r"robots\.toml: not UTF-8 text \(byte 0xe9 at line 3\)"):
        load_config(latin)
    result = CliRunner().invoke(cli, ["check", str(latin)])
    assert result.exit_code == 2, result.exception
    assert "not UTF-8 text" in result.output and "Traceback" not in result.output
    body = '[robots.x]\nplatform = "memory"\n\n[robots.x.agent]\nuse = "demo"\n'
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert list(load_config(bom).robots) == ["x"]
    seed = tmp_path / "config.json"
    seed.write_bytes(b'\xef\xbb\xbf{"agent": "demo", "clientId": "a", "clientSecret": "b"}')
    assert list(load_config(seed).robots) == ["support"]


@pytest.mark.parametrize("name", ["", " "])
def test_a_robot_without_a_name_is_refused(tmp_path: Path, name: str) -> None:
    """``[robots.""]`` ran as a robot whose logs said ``robot : connected to ...``."""
    path = write(
        tmp_path,
        f'[robots."{name}"]\nplatform = "memory"\n\n[robots."{name}".agent]\nuse = "demo"\n',
    )
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 2, result.output
    assert f'error: {path}: robots."{name}": a robot needs a name: [robots.NAME]' in result.output


def test_a_robot_named_twice_runs_once(tmp_path: Path) -> None:
    """``imrobots run x x`` started two runtimes of one robot (two connections of one app;
    on WeCom the second subscription takes the first one's place for good)."""
    config = load_config(write(tmp_path, GOOD), env=ENV)
    runtimes = build_runtimes(config, ["support", "support"])
    assert [runtime.name for runtime in runtimes] == ["support"]


async def test_console_runs_a_robot_named_twice_once(tmp_path: Path) -> None:
    from imrobots.demo import ConfigConsole

    path = write(tmp_path, '[robots.x]\nplatform = "memory"\n\n[robots.x.agent]\nuse = "demo"\n')
    console = ConfigConsole(path, names=["x", "x"], env={})
    await console.start()
    try:
        assert [robot.runtime.name for robot in console.robots] == ["x"]
    finally:
        await console.stop()


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[robots\n"))
    with pytest.raises(ConfigError, match=r"no robots: add a \[robots.NAME\] table"):
        load_config(write(tmp_path, "[store]\n"))


def test_seed_config_json(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        json.dumps({"agent": "demo", "clientId": "{{CID}}", "clientSecret": "{{CSECRET}}"}),
        "config.json",
    )
    config = load_config(path, env={"CID": "ding123", "CSECRET": "topsecret"})
    robot = config.robots["support"]
    assert robot.platform == "dingtalk"
    assert robot.settings == {"client_id": "ding123", "client_secret": "topsecret"}
    assert robot.agent == {"use": "demo"}
    # the seed silently used an empty string for a missing variable; we name it
    with pytest.raises(ConfigError, match="CSECRET"):
        load_config(path, env={"CID": "ding123"})


class _SeedClaim:
    """A plugin registering a platform that claims config.json files without "platform"."""

    def __init__(self, name: str) -> None:
        self.name = name

    @imrobots.hookimpl
    def register_platforms(self, register: Any) -> None:
        register(
            imrobots.PlatformSpec(
                name=self.name, factory="imrobots.memory:MemoryPlatform", seed_config=True
            )
        )


def test_seed_config_json_runs_on_the_platform_claiming_it(
    tmp_path: Path, manager: PluginManager
) -> None:
    seed = {"agent": "demo", "clientId": "x", "clientSecret": "y"}
    path = write(tmp_path, json.dumps(seed), "config.json")
    # the core names no platform: with none claiming such files, "platform" is required
    with pytest.raises(ConfigProblems, match="platform: required: no installed platform"):
        load_config(path)
    manager.register(_SeedClaim("chatone"), name="chatone")
    assert load_config(path).robots["support"].platform == "chatone"
    named = write(tmp_path, json.dumps({**seed, "platform": "memory"}), "named.json")
    assert load_config(named).robots["support"].platform == "memory"  # given: kept
    manager.register(_SeedClaim("chattwo"), name="chattwo")
    with pytest.raises(PluginError, match="'chatone', 'chattwo' all claim"):
        load_config(path)


def test_seed_config_json_requires_credentials(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"agent": "demo", "clientId": "x"}), "config.json")
    with pytest.raises(ConfigError, match="clientSecret: required but missing"):
        load_config(path)


@pytest.mark.parametrize("key", ["name", "platform"])
@pytest.mark.parametrize("value", ["", 5, None])
def test_seed_config_json_names_are_non_empty_strings(
    tmp_path: Path, key: str, value: object
) -> None:
    seed = {"agent": "demo", "clientId": "x", "clientSecret": "y", key: value}
    path = write(tmp_path, json.dumps(seed), "config.json")
    with pytest.raises(ConfigProblems) as info:
        load_config(path)
    assert f"{key}: expected a non-empty string" in str(info.value)
    assert "robots." not in str(info.value)  # named as in the file, not as converted


def test_check_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager: PluginManager
) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    good = runner.invoke(cli, ["check", str(write(tmp_path, GOOD))])
    assert good.exit_code == 0, good.output
    assert "robot 'support' (SupportRobot) on memory, agent demo" in good.output
    monkeypatch.delenv("FEEDBACK_SECRET")
    bad = runner.invoke(cli, ["check", str(write(tmp_path, GOOD))])
    assert bad.exit_code == 2
    assert bad.output.startswith("error: ") and "FEEDBACK_SECRET" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_a_string_is_not_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('deny_users = ["mallory"]', 'deny_users = "mallory"'))
    with pytest.raises(
        ConfigError, match=r"robots\.support\.policy\.deny_users: expected a list, got str"
    ):
        load_config(path, env=ENV)


def test_literal_choices_are_listed(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('strategy = "queue"', 'strategy = "sometimes"'))
    with pytest.raises(
        ConfigError, match="expected one of 'queue', 'concurrent', 'drop', 'debounce'"
    ):
        load_config(path, env=ENV)


def test_validator_messages_reach_the_user(manager: PluginManager) -> None:
    import attrs

    from imrobots.config import structure

    @attrs.frozen(kw_only=True)
    class Settings:
        port: int = attrs.field(validator=attrs.validators.gt(0))

    with pytest.raises(ConfigError, match="'port' must be > 0"):
        structure({"port": 0}, Settings, path="robots.x.settings", source="robots.toml")


def test_agent_settings_errors_name_the_config_path(tmp_path: Path, manager: PluginManager) -> None:
    config = load_config(write(tmp_path, GOOD.replace("delay = 0", 'delay = "slow"')), env=ENV)
    with pytest.raises(ConfigError) as info:
        prepare_robot(config.robots["support"], source="robots.toml", manager=manager)
    assert str(info.value) == "robots.toml: robots.support.agent.delay: expected float, got str"


# --- imrobots check: every error in one run -------------------------------------------------

FIVE_MISSING = """
[robots.support]
platform = "memory"
feedback_secret = "{{SECRET_1}}"
app_id = "{{SECRET_2}}"

[robots.support.settings]
app_id = "{{SECRET_3}}"

[robots.support.agent]
use = "openai"
model = "{{SECRET_4}}"
api_key = "{{SECRET_5}}"
"""


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_check_reports_five_missing_variables_in_one_run(
    tmp_path: Path, manager: PluginManager
) -> None:
    pytest.importorskip("openai", reason="the file's OpenAI agent needs the openai extra")
    path = write(tmp_path, FIVE_MISSING)
    result = CliRunner().invoke(cli, ["check", str(path)], env={})
    assert result.exit_code == 2
    errors = _errors(result.output)
    assert len(errors) == 5, result.output
    for number in range(1, 6):
        assert sum(f"SECRET_{number} is not set" in line for line in errors) == 1
    assert f"{path}: 5 errors" in result.output


class _Unavailable:
    """A plugin registering a platform whose SDK is not installed."""

    @staticmethod
    @imrobots.hookimpl
    def register_platforms(register: Any) -> None:
        register(
            imrobots.PlatformSpec(
                name="telex",
                factory="telex_sdk:Platform",
                requires=("telex_sdk_that_is_not_installed",),
                install='pip install "imrobots-telex"',
            )
        )


FIVE_KINDS = """
[robots.support]
platform = "memory"

[robots.support.settings]
streamng = "native"

[robots.support.agent]
use = "demo"

[robots.support.stream]
min_interval = -1
max_updates = 0

[robots.silent]
platform = "memory"

[robots.telex]
platform = "telex"

[robots.telex.agent]
use = "demo"
"""


def test_check_reports_five_kinds_of_error_with_the_users_paths(
    tmp_path: Path, manager: PluginManager
) -> None:
    manager.register(_Unavailable(), name="telex")
    path = write(tmp_path, FIVE_KINDS)
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 2
    errors = _errors(result.output)
    assert len(errors) == 5, result.output
    text = "\n".join(errors)
    prefix = f"error: {path}: "
    assert all(line.startswith(prefix) for line in errors)
    # the paths are the ones written in the file, never internal ones
    assert "options.stream" not in text
    assert "robots.support.stream.min_interval: must be >= 0, got -1" in text
    assert "robots.support.stream.max_updates: must be >= 1, got 0" in text
    assert "robots.support.settings: unknown key: streamng (did you mean streaming?)" in text
    assert "robots.silent.agent: required but missing: SupportRobot answers with its agent" in text
    assert "robots.telex.platform: platform 'telex' needs telex_sdk_that_is_not_installed" in text
    assert 'pip install "imrobots-telex"' in text


def test_unknown_keys_suggest_the_closest_known_key(tmp_path: Path) -> None:
    text = GOOD.replace("min_chunks = 5", "min_chunk = 5").replace(
        'strategy = "queue"', 'strategy = "queue"\nmax_concurent = 3'
    )
    with pytest.raises(ConfigProblems) as info:
        load_config(write(tmp_path, text + '\n[stor]\nbackend = "memory"\n'), env=ENV)
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].endswith("unknown top-level key: stor (did you mean store?)")
    assert any(
        p.endswith("robots.support.stream: unknown key: min_chunk (did you mean min_chunks?)")
        for p in problems
    )
    assert any(
        p.endswith(
            "robots.support.options: unknown key: max_concurent (did you mean max_concurrent?)"
        )
        for p in problems
    )


def test_range_checks_refuse_what_cannot_work(tmp_path: Path) -> None:
    text = GOOD.replace("max_concurrent = 10", "max_concurrent = 0").replace(
        "min_interval = 2.0", "min_interval = -1"
    )
    with pytest.raises(ConfigProblems) as info:
        load_config(write(tmp_path, text), env=ENV)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        "robots.support.options.max_concurrent: must be >= 1, got 0",
        "robots.support.stream.min_interval: must be >= 0, got -1",
    ]


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_liveness_ttl_that_is_not_positive_is_refused(tmp_path: Path, value: str) -> None:
    """``liveness_ttl = 0`` passed: the lease, renewed every third of it, was renewed in a
    loop that never slept, each time for 0 s, so every live replica looked dead."""
    text = GOOD.replace('strategy = "queue"', f'strategy = "queue"\nliveness_ttl = {value}')
    with pytest.raises(ConfigProblems) as info:
        load_config(write(tmp_path, text), env=ENV)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        f"robots.support.options.liveness_ttl: must be > 0, got {value}"
    ]


def test_a_robot_with_its_own_handler_may_go_without_an_agent(
    tmp_path: Path, manager: PluginManager
) -> None:
    path = write(
        tmp_path,
        '[robots.helpdesk]\nplatform = "memory"\n'
        'robot = "examples.custom_robot.robot:HelpdeskRobot"\n',
    )
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "HelpdeskRobot must answer without self.ask()" in (
        result.output
    )


def test_run_refuses_a_config_with_errors_listing_them_all(
    tmp_path: Path, manager: PluginManager
) -> None:
    pytest.importorskip("openai", reason="the file's OpenAI agent needs the openai extra")
    result = CliRunner().invoke(
        cli, ["run", "--config", str(write(tmp_path, FIVE_MISSING))], env={}
    )
    assert result.exit_code == 2 and len(_errors(result.output)) == 5


@attrs.frozen(kw_only=True)
class _Checked:
    """Settings with their own cross-field check, as plugins write them."""

    mode: Literal["a", "b"] = "a"
    count: int = 1
    url: str = "https://x"
    needed_in_b: str | None = None

    def __attrs_post_init__(self) -> None:
        problems: list[Exception] = []
        if not self.url.startswith("https://"):
            problems.append(ValueError(f"must start with https://, got {self.url!r}"))
        notes = ["url"] * len(problems)
        if self.mode == "b" and self.needed_in_b is None:
            problems.append(ValueError("required in mode 'b'"))
            notes.append("needed_in_b")
        if problems:
            errors = [
                _note(exc, AttributeValidationNote(f"{name}: {exc}", name, Any))
                for exc, name in zip(problems, notes, strict=True)
            ]
            raise ClassValidationError("invalid", errors, _Checked)


def _note(exc: Exception, note: AttributeValidationNote) -> Exception:
    exc.__notes__ = [note]
    return exc


def test_a_wrong_type_does_not_hide_what_the_settings_own_checks_find() -> None:
    """cattrs stops before ``__attrs_post_init__`` when a field has the wrong type;
    the problems of the other keys the table sets are still reported, with any unknown
    key, but none that only follows from a default standing in for the wrong value."""
    data = {"mode": "c", "count": "many", "url": "http://x", "extra": 1}
    value, problems = structure_problems(data, _Checked, path="s")
    assert value is None
    assert sorted(problems) == [
        ("s", "unknown key: extra"),
        ("s.count", "expected int, got str"),
        ("s.mode", "expected one of 'a', 'b'"),
        ("s.url", "must start with https://, got 'http://x'"),
    ]
    # mode "b" is valid: its required key is reported; a misspelt mode's would not be.
    _, problems = structure_problems({"mode": "b", "count": "x"}, _Checked, path="s")
    assert ("s.needed_in_b", "required in mode 'b'") not in problems  # not set by the table
    assert problems == [("s.count", "expected int, got str")]


def test_memory_settings_out_of_range_are_errors_naming_each_field(tmp_path: Path) -> None:
    """The memory platform's settings were not checked at all: ``app_rate = 0`` passed
    check and ``run`` stopped on the limiter's ``ValueError`` traceback; a share of 1.5,
    an infinite latency and an operation name that does not exist passed too."""
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.m]\nplatform = "memory"\n[robots.m.agent]\nuse = "demo"\n'
        "[robots.m.settings]\napp_rate = 0\nfailure_rate = 1.5\nlatency = inf\n"
        'timeout_after_act_ops = ["send_cards"]\n',
        encoding="utf-8",
    )
    for command in (["check", str(config)], ["run", "--no-status", "--config", str(config)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        prefix = f"error: {config}: robots.m.settings."
        assert [line for line in result.output.splitlines() if line.startswith("error")] == [
            f"{prefix}app_rate: must be positive, got 0.0",
            f"{prefix}failure_rate: must be a share 0..1, got 1.5",
            f"{prefix}latency: must be 0 or more seconds, got inf",
            f"{prefix}timeout_after_act_ops: unknown operation 'send_cards'; choose from "
            "send_card, update_card, stream_update, renew, send_text, send_image, send_file",
        ]


@pytest.mark.parametrize(
    ("text", "where", "got"),
    [
        ('store = "redis"\n', "store", "str"),
        ("[robots.support]\noptions = 5\n", "robots.support.options", "int"),
        ("[robots.support]\nstream = 5\n", "robots.support.stream", "int"),
        ("[robots.support]\npolicy = []\n", "robots.support.policy", "list"),
        (
            "[robots.support.policy.group_overrides]\ncid = 5\n",
            "robots.support.policy.group_overrides.cid",
            "int",
        ),
    ],
)
def test_a_value_where_a_table_belongs_is_one_line(
    tmp_path: Path, text: str, where: str, got: str
) -> None:
    """``store = "redis"`` (for ``[store] backend = "redis"``) made check, run and
    feedback export print cattrs' AttributeError traceback; ``options = 5`` said
    "expected RuntimeOptions" and ``policy = []`` "'list' object has no attribute 'keys'"."""
    config = tmp_path / "robots.toml"
    head, _, rest = text.partition("\n")
    if head.startswith("[robots.support]"):
        body = f'[robots.support]\nplatform = "memory"\n{rest}'
    elif head.startswith("[robots.support."):
        body = f'[robots.support]\nplatform = "memory"\n{text}'
    else:
        body = f'{text}[robots.support]\nplatform = "memory"\n'
    config.write_text(body + '[robots.support.agent]\nuse = "demo"\n', encoding="utf-8")
    commands = [["check", str(config)]]
    if where == "store":
        commands.append(["feedback", "export", "--config", str(config)])
    for command in commands:
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert f"error: {config}: {where}: expected a table, got {got}" in result.output


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("config.json", '{"agent": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("robots.toml", "robots = " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("robots.toml", "[robots.x]\nplatform = 'memory'\nz = " + "[" * 70 + "]" * 70 + "\n"),
    ],
)
def test_a_config_nested_absurdly_deep_is_one_error_line(
    tmp_path: Path, name: str, text: str
) -> None:
    """The JSON and TOML parsers hit Python's recursion limit on such a file, and check,
    run and feedback export printed a RecursionError traceback."""
    config = tmp_path / name
    config.write_text(text, encoding="utf-8")
    for command in (["check", str(config)], ["feedback", "export", "--config", str(config)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert result.output == (
            f"error: {config}: values nested more than 64 levels deep; no config needs that\n"
        )


def test_a_stream_policy_given_twice_is_an_error(tmp_path: Path) -> None:
    """[robots.NAME.options.stream] and [robots.NAME.stream] both set: the second silently
    replaced the first."""
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.support]\nplatform = "memory"\n[robots.support.agent]\nuse = "demo"\n'
        "[robots.support.options.stream]\nmin_interval = 1.0\n"
        "[robots.support.stream]\nmin_interval = 2.0\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["check", str(config)])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"error: {config}: robots.support.options.stream: given twice, also as "
        "[robots.support.stream]; keep [robots.support.stream] only"
    ]


@pytest.mark.parametrize("strategy", ["drop", "concurrent", "debounce"])
def test_interrupt_with_another_strategy_than_queue_is_a_warning(
    tmp_path: Path, strategy: str
) -> None:
    """``interrupt = true`` does something only with ``strategy = "queue"``; with another
    it was taken without a word."""
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.support]\nplatform = "memory"\n[robots.support.agent]\nuse = "demo"\n'
        f'[robots.support.options]\nstrategy = "{strategy}"\ninterrupt = true\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["check", str(config)])
    assert result.exit_code == 0, result.output
    assert (
        f'warning: {config}: robots.support.options.interrupt: only strategy "queue" '
        f"interrupts; ignored with strategy '{strategy}'"
    ) in result.output.splitlines()
    config.write_text(config.read_text("utf-8").replace(strategy, "queue"), "utf-8")
    assert "warning" not in CliRunner().invoke(cli, ["check", str(config)]).output


def test_number_problems_names_each_field_once() -> None:
    """The plugins' own numeric checks (imrobots.config.number_problems)."""
    import attrs

    from imrobots.platform import number_problems

    @attrs.frozen
    class Settings:
        rate: float | None = 1.0
        timeout: float = 10.0
        first: float = 0.5
        most: float = 30.0

    names = ("rate", "timeout", "first", "most")
    assert number_problems(Settings(), names, ordered=[("first", "most")]) == []
    assert number_problems(Settings(rate=None), names) == []  # unset: the default applies
    assert number_problems(
        Settings(rate=0.0, timeout=math.inf, first=5.0, most=2.0),
        names,
        ordered=[("first", "most")],
    ) == [
        ("rate", "must be positive, got 0.0"),
        ("timeout", "must be finite, got inf"),
        ("most", "must be at least first (5 s), got 2"),
    ]
    [(field, message)] = number_problems(Settings(rate=math.nan), names)
    assert (field, message) == ("rate", "must be positive, got nan")
    # an order is not checked when either side already has a problem of its own
    assert number_problems(Settings(first=-1.0, most=-2.0), names, ordered=[("first", "most")]) == [
        ("first", "must be positive, got -1.0"),
        ("most", "must be positive, got -2.0"),
    ]
