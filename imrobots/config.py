"""Configuration: TOML with one ``[robots.NAME]`` table per robot, or the seed's ``config.json``.

``{{NAME}}`` placeholders are replaced by environment variables; a missing
variable is an error naming it and the file. Every validation error is one
line naming the file and the path of the bad field, as the user wrote it;
:func:`load_config` reports every error of a file at once
(:class:`ConfigProblems`), and :func:`check_config` adds what can be checked
without connecting (platforms, their settings, robot classes, agents). Secrets
(typed :class:`~imrobots.secret.Secret`) never appear in reprs or errors.
"""

from __future__ import annotations

import collections.abc
import difflib
import json
import operator
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs
import cattrs
import cattrs.cols as cols
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from .errors import ConfigError, ImrobotsError
from .policy import AccessPolicy
from .runtime import RuntimeOptions
from .secret import Secret
from .streaming import StreamPolicy

if TYPE_CHECKING:
    from .app import PreparedRobot
    from .plugins import PluginManager

__all__ = [
    "BOUNDS",
    "CheckResult",
    "Config",
    "ConfigProblems",
    "RobotConfig",
    "StoreConfig",
    "check_config",
    "load_config",
    "load_store_config",
    "make_converter",
    "structure",
]

T = TypeVar("T")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_PLACEHOLDER = PLACEHOLDER


@attrs.frozen(kw_only=True)
class StoreConfig:
    """``[store]``: where state lives."""

    backend: Literal["memory", "sqlite", "redis"] = "memory"
    path: str = "imrobots.sqlite3"
    """The SQLite file (``backend = "sqlite"``)."""
    url: str = attrs.field(default="redis://127.0.0.1:6379/0", repr=False)
    """The Redis server (``backend = "redis"``); it may hold a password, so it has no repr."""
    prefix: str = "imrobots:"
    """Every Redis key of the store starts with it (``backend = "redis"``)."""


@attrs.frozen(kw_only=True)
class RobotConfig:
    """``[robots.NAME]``: one robot."""

    name: str
    platform: str
    """The platform it runs on (see ``imrobots platforms``)."""
    robot: str = "support"
    """A registered robot name or ``"package.module:Class"``."""
    settings: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    """The platform's settings; converted by the platform's settings class."""
    agent: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    """``use = "demo" | "openai" | "package.module:callable"`` and the agent's settings."""
    feedback_secret: Secret | None = None
    """HMAC key of the feedback buttons; set it so buttons keep working across restarts."""
    app_id: str | None = None
    """Robots sharing an ``app_id`` on one platform share one rate limiter."""
    policy: AccessPolicy = AccessPolicy()
    """Who may talk to the robot."""
    options: RuntimeOptions = RuntimeOptions()
    """How the robot takes in messages (the inbound pipeline)."""


@attrs.frozen(kw_only=True)
class Config:
    robots: Mapping[str, RobotConfig]
    store: StoreConfig = StoreConfig()
    path: Path | None = None


# ---------------------------------------------------------------------------------- bounds
@attrs.frozen
class Bound:
    """A numeric bound of a config field: ``value <op> limit`` must hold."""

    op: Literal[">", ">="]
    limit: float

    def holds(self, value: float) -> bool:
        compare: Callable[[float, float], bool] = operator.gt if self.op == ">" else operator.ge
        return compare(value, self.limit)


BOUNDS: dict[type, dict[str, Bound]] = {
    StreamPolicy: {
        "min_interval": Bound(">=", 0),
        "min_chars": Bound(">=", 1),
        "min_chunks": Bound(">=", 1),
        "min_gap": Bound(">=", 0),
        "max_updates": Bound(">=", 1),
        "agent_timeout": Bound(">", 0),
        "final_deadline": Bound(">", 0),
        "retry_backoff": Bound(">", 0),
        "max_backoff": Bound(">", 0),
        "rate_limit_backoff": Bound(">", 0),
        "lifetime_margin": Bound(">=", 0),
    },
    RuntimeOptions: {
        "debounce": Bound(">=", 0),
        "max_concurrent": Bound(">=", 1),
        "max_pending": Bound(">=", 1),
        "max_queue": Bound(">=", 1),
        "stale_after": Bound(">", 0),
        "dedupe_ttl": Bound(">", 0),
        "in_flight_ttl": Bound(">", 0),
        "handler_timeout": Bound(">", 0),
        "history_limit": Bound(">=", 0),
        "history_ttl": Bound(">", 0),
        "answer_ttl": Bound(">", 0),
        "refusal_hold": Bound(">=", 0),
        "turn_grace": Bound(">=", 0),
        "liveness_ttl": Bound(">", 0),
    },
}
"""Numeric bounds of the core's config classes, checked by :func:`load_config` and
published in the JSON Schema (``imrobots config schema``). Plugins bound their own
settings with attrs validators (``attrs.validators.gt(0)`` and friends, which the
schema reads too)."""


def _strict(kind: type[T]) -> Any:
    def hook(value: Any, _: type[Any]) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return hook


def make_converter() -> cattrs.Converter:
    """A strict converter: no silent ``"10"`` -> 10 or ``"false"`` -> True, no unknown keys."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for kind in (str, int, float, bool):
        converter.register_structure_hook(kind, _strict(kind))

    def secret(value: Any, _: type[Any]) -> Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise TypeError(f"expected str, got {type(value).__name__}")
        return Secret(value)

    converter.register_structure_hook(Secret, secret)

    # A string is iterable, so cattrs would turn "a,b" into a tuple of characters: refuse it.
    def sequence_factory(type_: Any, conv: cattrs.Converter) -> Any:
        args = typing.get_args(type_)
        homogenous = typing.get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis
        base = (
            cols.homogenous_tuple_structure_factory(type_, conv)
            if homogenous
            else cols.list_structure_factory(type_, conv)
        )

        def hook(value: Any, cls: Any) -> Any:
            if isinstance(value, str | bytes | dict):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            return base(value, cls)

        return hook

    def mapping_factory(type_: Any, conv: cattrs.Converter) -> Any:
        base = cols.mapping_structure_factory(type_, conv)

        def hook(value: Any, cls: Any) -> Any:
            if not isinstance(value, collections.abc.Mapping):
                raise TypeError(f"expected a table, got {type(value).__name__}")
            return base(value, cls)

        return hook

    # A config class (a table in the file) given a string or a number: one line, "expected
    # a table, got str", not cattrs' "'str' object has no attribute 'keys'" (a traceback
    # for [store]) or "expected RuntimeOptions".
    def table_factory(type_: Any, conv: cattrs.Converter) -> Any:
        base = conv.gen_structure_attrs_fromdict(type_)

        def hook(value: Any, cls: Any) -> Any:
            if not isinstance(value, collections.abc.Mapping):
                raise TypeError(f"expected a table, got {type(value).__name__}")
            return base(value, cls)

        return hook

    factory: Any = table_factory
    converter.register_structure_hook_factory(attrs.has, factory)
    factory = sequence_factory
    converter.register_structure_hook_factory(
        lambda t: cols.is_sequence(t) and bool(typing.get_args(t)), factory
    )
    factory = mapping_factory
    converter.register_structure_hook_factory(
        lambda t: cols.is_mapping(t) and bool(typing.get_args(t)), factory
    )
    return converter


_converter = make_converter()


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` when a choice is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _field_names(cls: type) -> list[str]:
    if cls is RobotConfig:
        return [*(f.name for f in attrs.fields(RobotConfig) if f.name != "name"), "stream"]
    if attrs.has(cls):
        return [f.name for f in attrs.fields(cls)]
    return []


def _describe(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        keys = ", ".join(sorted(exc.extra_fields))
        return f"unknown key{'s' if len(exc.extra_fields) > 1 else ''}: {keys}"
    if isinstance(exc, KeyError):
        return "required but missing"
    if typing.get_origin(type_) is Literal:
        return "expected one of " + ", ".join(repr(a) for a in typing.get_args(type_))
    if isinstance(exc, TypeError | ValueError):
        text = str(exc)
        if text.startswith("expected ") or (isinstance(exc, ValueError) and text):
            return text
        name = getattr(type_, "__name__", None) or str(type_).replace("typing.", "")
        return f"expected {name}"
    return str(exc)


def _join(path: str, name: object) -> str:
    return f"{path}.{name}" if path else str(name)


def _problems_of(exc: BaseException, path: str, type_: Any = None) -> list[tuple[str, str]]:
    """Every error of a (detailed) cattrs exception, as ``(path, message)``; one per
    unknown key, with a suggestion when a known key is close."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        found: list[tuple[str, str]] = []
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            name: Any = getattr(note, "name", None)
            index: Any = getattr(note, "index", None)
            if name is not None:
                where = _join(path, name)
            elif isinstance(index, str):  # a key of a table
                where = _join(path, index)
            else:
                where = f"{path}[{index}]"
            found.extend(_problems_of(sub, where, note.type))
        for sub in without:
            found.extend(_problems_of(sub, path))
        return found
    if isinstance(exc, ForbiddenExtraKeysError):
        known = _field_names(exc.cl)
        return [
            (path, f"unknown key: {key}{did_you_mean(key, known)}")
            for key in sorted(exc.extra_fields)
        ]
    return [(path, _describe(exc, type_))]


def _bound_problems(data: Any, cls: Any, path: str) -> list[tuple[str, str]]:
    """Numbers of ``data`` (raw, before conversion) outside :data:`BOUNDS`, walking into
    nested config classes and tables of them."""
    found: list[tuple[str, str]] = []
    cls = _unwrap_optional(cls)
    if attrs.has(cls) and isinstance(data, Mapping):
        attrs.resolve_types(cls)
        bounds = BOUNDS.get(cls, {})
        for field in attrs.fields(cls):
            if field.name not in data:
                continue
            value = data[field.name]
            where = _join(path, field.name)
            bound = bounds.get(field.name)
            if (
                bound is not None
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and not bound.holds(value)
            ):
                found.append((where, f"must be {bound.op} {bound.limit:g}, got {value!r}"))
            found.extend(_bound_problems(value, field.type, where))
    elif cols.is_mapping(cls) and isinstance(data, Mapping):
        args = typing.get_args(cls)
        if len(args) == 2:
            for key, value in data.items():
                found.extend(_bound_problems(value, args[1], _join(path, key)))
    return found


def _unwrap_optional(type_: Any) -> Any:
    args = [a for a in typing.get_args(type_) if a is not type(None)]
    if type(None) in typing.get_args(type_) and len(args) == 1:
        return args[0]
    return type_


def structure_problems(
    data: Any, cls: type[T], *, path: str
) -> tuple[T | None, list[tuple[str, str]]]:
    """Convert ``data`` to ``cls`` with the strict converter and check :data:`BOUNDS`.

    Returns the value (``None`` when there were problems) and every problem as
    ``(path, message)``."""
    problems = _bound_problems(data, cls, path)
    try:
        value = _converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        found = _problems_of(exc, path)
        return None, [*found, *_problems_besides(data, cls, path, found), *problems]
    except (TypeError, ValueError) as exc:
        return None, [(path, _describe(exc, cls)), *problems]
    return (None, problems) if problems else (value, [])


def _problems_besides(
    data: Any, cls: Any, path: str, found: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The problems a settings class's own checks (``__attrs_post_init__``: one field
    against another, formats) find in ``data`` once the fields named in ``found`` and the
    unknown keys are left out: cattrs stops before those checks run when a field has the
    wrong type, and ``imrobots check`` reports every error at once. Only problems of
    fields the table sets are kept: one about a field left out, or missing, may follow
    from a default that stood in for a wrong value (a required key of the default mode
    when the mode was misspelt)."""
    if not attrs.has(cls) or not isinstance(data, Mapping):
        return []
    names = _field_names(cls)
    fields = {*names, *(f.name for f in attrs.fields(cls))}
    prefix = f"{path}." if path else ""
    # cattrs reports unknown keys only when every field converted: name them here too.
    told = {what for where, what in found if where == path}
    unknown = [
        (path, message)
        for key in sorted(str(k) for k in data if k not in fields)
        if (message := f"unknown key: {key}{did_you_mean(key, names)}") not in told
    ]
    bad = {where[len(prefix) :].split(".")[0].split("[")[0] for where, _ in found}
    kept = {key: value for key, value in data.items() if key in fields and key not in bad}
    if len(kept) == len(data):
        return unknown
    try:
        _converter.structure(kept, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        more = _problems_of(exc, path)
    except (TypeError, ValueError):
        return unknown
    else:
        return unknown
    return unknown + [
        (where, what)
        for where, what in more
        if where != path and where[len(prefix) :].split(".")[0].split("[")[0] in kept
    ]


def settings_warnings(settings: object) -> list[tuple[str, str]]:
    """Advice on a platform's converted settings that ``imrobots check`` prints as
    warnings without failing: ``(field, message)`` pairs from the settings object's
    ``config_warnings()`` method, if it has one (e.g. a callback mode without signatures,
    keys of another mode)."""
    method = getattr(settings, "config_warnings", None)
    if settings is None or not callable(method):
        return []
    return [(str(field), str(message)) for field, message in method()]


def settings_identity(settings: object) -> tuple[str, str] | None:
    """Which app a platform's converted settings connect as: ``(field, identity)`` from
    the settings object's ``app_identity()`` method, if it has one and it returns a pair
    (``field`` is the settings key ``imrobots check`` names; ``identity`` a string equal
    for two robots exactly when they are one app of that platform, never a secret), else
    ``None``."""
    method = getattr(settings, "app_identity", None)
    if settings is None or not callable(method):
        return None
    found = method()
    if found is None:
        return None
    field, identity = found
    return str(field), str(identity)


def structure(data: Any, cls: type[T], *, path: str, source: str | None = None) -> T:
    """Convert ``data`` to ``cls`` with the strict converter.

    Errors become one :class:`ConfigError` line naming ``source: path.of.field``
    (without the ``source:`` prefix when ``source`` is ``None``); several errors are
    joined with ``"; "``. Plugins and agents use this for their settings tables, so
    they fail like the rest of the config.
    """
    prefix = f"{source}: " if source else ""
    value, problems = structure_problems(data, cls, path=path)
    if problems:
        raise ConfigError(prefix + "; ".join(_line(where, what) for where, what in problems))
    assert value is not None
    return value


def _line(where: str, what: str) -> str:
    return f"{where}: {what}" if where else what


class ConfigProblems(ConfigError):
    """Every error found in a config file, each one line naming the file and the field.

    ``str()`` is the lines joined with newlines (one line when there is one error)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Collector:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"{self.source}: {_line(where, what)}")

    def extend(self, problems: Iterable[tuple[str, str]]) -> None:
        for where, what in problems:
            self.add(where, what)


def substitute(
    value: Any,
    *,
    path: str,
    source: str,
    env: Mapping[str, str],
    missing: list[tuple[str, str]] | None = None,
) -> Any:
    """Replace ``{{NAME}}`` placeholders in every string with environment variables.

    A missing variable raises :class:`ConfigError`, or, when ``missing`` is a list,
    is appended to it as ``(path, NAME)`` and its placeholder left as it is."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                if missing is not None:
                    missing.append((path, name))
                    return match.group(0)
                raise ConfigError(
                    f"{source}: {path} uses {{{{{name}}}}} but the environment variable "
                    f"{name} is not set"
                )
            return env[name]

        return PLACEHOLDER.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: substitute(v, path=_join(path, k), source=source, env=env, missing=missing)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            substitute(v, path=f"{path}[{i}]", source=source, env=env, missing=missing)
            for i, v in enumerate(value)
        ]
    return value


_SEED_KEYS = ("agent", "clientId", "clientSecret", "name", "platform")


def _from_seed_json(data: dict[str, Any], problems: _Collector) -> dict[str, Any] | None:
    """The seed's single-robot ``config.json``: ``agent``, ``clientId``, ``clientSecret``."""
    for key in sorted(set(data) - set(_SEED_KEYS)):
        problems.add(key, f"unknown key{did_you_mean(key, _SEED_KEYS)}")
    for key in ("clientId", "clientSecret"):
        if key not in data:
            problems.add(key, "required but missing")
        elif not isinstance(data[key], str) or not data[key]:
            problems.add(key, "expected a non-empty string")
    agent = data.get("agent", "demo")
    if not isinstance(agent, str):
        problems.add("agent", "expected str")
    for key in ("name", "platform"):
        if key in data and (not isinstance(data[key], str) or not data[key]):
            problems.add(key, "expected a non-empty string")
    platform = data.get("platform")
    if platform is None:
        # the seed's file names no platform: the one whose plugin claims such files
        from .plugins import get_plugin_manager

        platform = get_plugin_manager().seed_platform()
        if platform is None:
            problems.add(
                "platform", "required: no installed platform takes a config.json without it"
            )
    if problems.lines:
        return None
    name = data.get("name", "support")
    return {
        "robots": {
            name: {
                "robot": "support",
                "platform": platform,
                "settings": {"client_id": data["clientId"], "client_secret": data["clientSecret"]},
                "agent": {"use": agent},
            }
        }
    }


def _line_of(path: Path, offset: int) -> int:
    """The 1-based line of byte ``offset`` of the file at ``path``."""
    return path.read_bytes()[:offset].count(b"\n") + 1


def _read(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as Windows editors write, is skipped
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = _line_of(path, exc.start)
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at line {line}): "
            "save the config as UTF-8"
        ) from None
    too_deep = ConfigError(
        f"{source}: values nested more than {_MAX_DEPTH} levels deep; no config needs that"
    )
    data: dict[str, Any]
    if path.suffix == ".json":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        except RecursionError:
            raise too_deep from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        data = parsed
        data.pop("$schema", None)  # an editor's schema reference
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: {exc}") from None
        except RecursionError:
            raise too_deep from None
    if _deeper_than(data, _MAX_DEPTH):  # the checks after this walk it recursively
        raise too_deep
    return data


_MAX_DEPTH = 64
"""Levels of tables and arrays a config file may nest (a real one has four or five)."""


def _deeper_than(data: object, limit: int) -> bool:
    """Whether ``data`` nests dicts and lists more than ``limit`` levels deep (walked
    without recursion: the parsers take deeper files than Python's recursion limit)."""
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return False


@attrs.frozen
class _RobotTables:
    """What a robot's table names, for the checks past loading (even when the rest of
    the table has problems)."""

    name: str
    platform: str
    robot: str
    settings: dict[str, Any]
    agent: dict[str, Any]


def _tables_of(name: str, table: dict[str, Any]) -> _RobotTables | None:
    platform, robot = table.get("platform"), table.get("robot", "support")
    settings, agent = table.get("settings", {}), table.get("agent", {})
    strings = isinstance(platform, str) and isinstance(robot, str)
    if strings and isinstance(settings, dict) and isinstance(agent, dict):
        return _RobotTables(name, str(platform), str(robot), settings, agent)
    return None


def _load_robot(name: str, table: object, problems: _Collector) -> RobotConfig | None:
    where = f"robots.{name}"
    if not name.strip():
        # the name is how logs, metrics, health, the store's keys and `run NAME` tell
        # robots apart: a blank one says nothing (`robot : connected to ...`)
        problems.add(
            f'robots."{name}"', "a robot needs a name: [robots.NAME], e.g. [robots.support]"
        )
        return None
    if not isinstance(table, dict):
        problems.add(where, "expected a table")
        return None
    settings = table.get("settings", {})
    agent = table.get("agent", {})
    tables_ok = True
    for key, value in (("settings", settings), ("agent", agent)):
        if not isinstance(value, dict):
            problems.add(f"{where}.{key}", "expected a table")
            tables_ok = False
    options = table.get("options", {})
    top_stream = "stream" in table
    if isinstance(options, dict):
        options = dict(options)
        if top_stream and "stream" in options:  # one would silently replace the other
            problems.add(
                f"{where}.options.stream",
                f"given twice, also as [{where}.stream]; keep [{where}.stream] only",
            )
        if top_stream:
            options["stream"] = table["stream"]
    rest = {k: v for k, v in table.items() if k not in ("settings", "agent", "options", "stream")}
    robot, found = structure_problems(
        {**rest, "name": name, "options": options}, RobotConfig, path=where
    )
    if top_stream:  # the user wrote [robots.NAME.stream]: show that path, not ours
        inner = f"{where}.options.stream"
        found = [(w.replace(inner, f"{where}.stream", 1), m) for w, m in found]
    problems.extend(found)
    secret = robot.feedback_secret if robot is not None else None
    if secret is not None and not secret.get().strip():  # a {{VAR}} set to nothing, say
        problems.add(
            f"{where}.feedback_secret",
            "is blank: give a secret, or leave the key out for a key kept in the store",
        )
    if robot is None or not tables_ok:
        return None
    return attrs.evolve(robot, settings=settings, agent=agent)


def _load(
    path: Path,
    env: Mapping[str, str],
    problems: _Collector,
    *,
    keep_missing: Callable[[str], bool] = lambda where: False,
) -> tuple[Config | None, list[_RobotTables]]:
    """The config (``None`` when anything is wrong) and the tables of every robot."""
    source = str(path)
    data = _read(path)
    missing: list[tuple[str, str]] = []
    data = substitute(data, path="", source=source, env=env, missing=missing)
    for where, name in missing:
        if not keep_missing(where):
            problems.lines.append(
                f"{source}: {where} uses {{{{{name}}}}} but the environment variable "
                f"{name} is not set"
            )
    if path.suffix == ".json" and "robots" not in data:
        seed = _from_seed_json(data, problems)
        if seed is None:
            return None, []
        data = seed
    for key in sorted(set(data) - {"robots", "store"}):
        problems.add("", f"unknown top-level key: {key}{did_you_mean(key, ('robots', 'store'))}")
    robots_raw = data.get("robots")
    if not isinstance(robots_raw, dict) or not robots_raw:
        problems.add("", "no robots: add a [robots.NAME] table")
        robots_raw = {}
    robots: dict[str, RobotConfig] = {}
    tables: list[_RobotTables] = []
    for name, table in robots_raw.items():
        robot = _load_robot(name, table, problems)
        if robot is not None:
            robots[name] = robot
        if isinstance(table, dict) and (found_tables := _tables_of(name, table)) is not None:
            tables.append(found_tables)
    store, found = structure_problems(data.get("store", {}), StoreConfig, path="store")
    problems.extend(found)
    if problems.lines or store is None:
        return None, tables
    return Config(robots=robots, store=store, path=path), tables


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate a config file (without importing any platform).

    :raises ConfigError: the file cannot be read or parsed (one line), or
        :class:`ConfigProblems` listing every error found, each one line.
    """
    path = Path(path)
    problems = _Collector(str(path))
    config, _ = _load(path, os.environ if env is None else env, problems)
    if problems.lines or config is None:
        raise ConfigProblems(problems.lines)
    return config


def load_store_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> StoreConfig:
    """Only the ``[store]`` table of a config file (the default when there is none):
    what ``imrobots feedback export`` needs, without the robots' credentials.

    :raises ConfigError: the file cannot be read, or its ``[store]`` is wrong.
    """
    path = Path(path)
    source = str(path)
    data = _read(path)
    raw = data.get("store", {}) if "robots" in data or path.suffix != ".json" else {}
    missing: list[tuple[str, str]] = []
    raw = substitute(
        raw, path="store", source=source, env=os.environ if env is None else env, missing=missing
    )
    problems = _Collector(source)
    for where, name in missing:
        problems.add(where, f"uses {{{{{name}}}}} but the environment variable {name} is not set")
    store, found = structure_problems(raw, StoreConfig, path="store")
    problems.extend(found)
    if problems.lines or store is None:
        raise ConfigProblems(problems.lines)
    return store


@attrs.frozen(kw_only=True)
class CheckResult:
    """What :func:`check_config` found."""

    config: Config | None
    """The whole config, when it has no error."""
    robots: tuple[PreparedRobot, ...] = ()
    """The robots that passed every check (even when others did not)."""
    errors: tuple[str, ...] = ()
    """Every error, one line each (``FILE: path: message``)."""
    warnings: tuple[str, ...] = ()
    """Things that work but may not be meant, one line each."""
    unset: tuple[str, ...] = ()
    """With ``emulated=True``: the settings whose environment variables are not set
    (left to the emulator's settings)."""

    @property
    def ok(self) -> bool:
        return not self.errors


def check_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    manager: PluginManager | None = None,
    emulated: bool = False,
) -> CheckResult:
    """Everything :func:`load_config` checks and, per robot, what can be checked without
    connecting: its platform is installed and available, its settings convert, its robot
    class imports, its agent builds, and a robot that answers with its agent has one.
    Every error of the file is reported, each one line.

    With ``emulated=True`` (``imrobots console``) the platform settings are not
    converted and their missing variables are no error: the emulator's settings
    replace the credentials and endpoints that usually use them (listed in ``unset``).
    """
    from .app import PreparedRobot, build_agent, store_problem
    from .app import _robot_class as robot_class_for
    from .platform import resolve_object
    from .plugins import get_plugin_manager

    path = Path(path)
    source = str(path)
    manager = manager or get_plugin_manager()
    problems = _Collector(source)
    unset: list[str] = []
    missing: set[str] = set()

    def keep(where: str) -> bool:
        missing.add(where)
        if emulated and re.match(r"robots\.[^.]+\.settings(\.|\[|$)", where):
            unset.append(where)
            return True
        return False

    try:
        config, loaded = _load(
            path, os.environ if env is None else env, problems, keep_missing=keep
        )
    except ConfigError as exc:  # unreadable or unparsable: nothing more to check
        return CheckResult(config=None, errors=(str(exc),))
    prepared: list[PreparedRobot] = []
    warnings: list[str] = []
    apps: dict[tuple[str, str], str] = {}  # (platform, app identity): the first robot's name
    for robot in loaded:
        where = f"robots.{robot.name}"
        before = len(problems.lines)
        settings: object = None
        try:
            spec = manager.platform_spec(robot.platform)
        except ImrobotsError as exc:
            problems.add(f"{where}.platform", str(exc))
        else:
            if spec.settings is None:
                if robot.settings:
                    problems.add(f"{where}.settings", f"platform {spec.name!r} takes no settings")
            elif not emulated:
                settings, found = structure_problems(
                    dict(robot.settings), resolve_object(spec.settings), path=f"{where}.settings"
                )
                # a value that is still a placeholder was reported as a missing variable
                problems.extend((w, m) for w, m in found if w not in missing)
                if not found:
                    warnings.extend(
                        f"{source}: {where}.settings.{field}: {message}"
                        for field, message in settings_warnings(settings)
                    )
                    if (identity := settings_identity(settings)) is not None:
                        field, app = identity
                        first = apps.setdefault((spec.name, app), robot.name)
                        if first != robot.name:
                            warnings.append(
                                f"{source}: {where}.settings.{field}: the same as robots."
                                f"{first}'s: robots {first} and {robot.name} would be one "
                                f"{spec.name} app, and each would miss the messages the "
                                "platform hands to the other; give each robot its own app"
                            )
        robot_class: type[Any] | None = None
        agent: object | None = None
        try:
            robot_class = robot_class_for(robot.robot, manager, where)
        except ConfigError as exc:
            problems.lines.append(f"{source}: {exc}")
        try:
            agent = build_agent(robot.agent, where=f"{where}.agent")
        except ConfigError as exc:
            problems.lines.append(f"{source}: {exc}")
        if robot_class is not None and not robot.agent:
            if _answers_with_agent(robot_class):
                problems.add(
                    f"{where}.agent",
                    f"required but missing: {robot_class.__name__} answers with its agent; "
                    f'add [{where}.agent] with use = "demo", "openai" or "package.module:callable"',
                )
            else:
                warnings.append(
                    f"{source}: {where}.agent: none; {robot_class.__name__} must answer "
                    "without self.ask()"
                )
        options = (
            config.robots[robot.name].options if config and robot.name in config.robots else None
        )
        if options is not None and options.interrupt and options.strategy != "queue":
            warnings.append(
                f'{source}: {where}.options.interrupt: only strategy "queue" interrupts; '
                f"ignored with strategy {options.strategy!r}"
            )
        if (
            len(problems.lines) == before
            and robot_class is not None
            and config is not None
            and robot.name in config.robots
        ):
            prepared.append(
                PreparedRobot(
                    config=config.robots[robot.name],
                    robot_class=robot_class,
                    platform_settings=settings,
                    agent=agent,
                )
            )
    if not emulated:  # the proxy variables the robots' connections will use
        problem = _proxy_problem(os.environ if env is None else env)
        if problem:
            problems.add("", problem)
        # the store (console keeps state in memory whatever the file says)
        if config is not None and (problem := store_problem(config)) is not None:
            problems.lines.append(problem)
    return CheckResult(
        config=config if not problems.lines else None,
        robots=tuple(prepared),
        errors=tuple(problems.lines),
        warnings=tuple(warnings),
        unset=tuple(dict.fromkeys(unset)),
    )


def _proxy_problem(env: Mapping[str, str]) -> str | None:
    """What is wrong with the proxy variables of ``env`` (``HTTPS_PROXY``, ``ALL_PROXY``...),
    as ``run`` would find when it connects: a value that is no proxy URL, a scheme that is
    not supported, a SOCKS proxy without the ``proxy`` extra; ``None`` if nothing."""
    from .proxies import ProxySettings, _require_socks

    try:
        for route in ProxySettings.from_env(env).routes:
            if route.is_socks:
                _require_socks(route)
    except ConfigError as exc:
        return str(exc)
    return None


def _answers_with_agent(robot_class: type) -> bool:
    """Whether the class answers messages with the ``on_message`` of :class:`Robot` or
    :class:`SupportRobot`, which stream the agent's answer (a class with its own
    ``on_message`` may answer without an agent)."""
    from .examples import SupportRobot
    from .robot import Robot

    return getattr(robot_class, "on_message", None) in (Robot.on_message, SupportRobot.on_message)
