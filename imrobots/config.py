"""Configuration: TOML with one ``[robots.NAME]`` table per robot, or the seed's ``config.json``.

``{{NAME}}`` placeholders are replaced by environment variables; a missing
variable is an error naming it and the file. Every validation error is one
line naming the file and the path of the bad field. Secrets (typed
:class:`~imrobots.secret.Secret`) never appear in reprs or errors.
"""

from __future__ import annotations

import collections.abc
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import cattrs
import cattrs.cols as cols
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from .errors import ConfigError
from .policy import AccessPolicy
from .runtime import RuntimeOptions
from .secret import Secret

__all__ = [
    "Config",
    "RobotConfig",
    "StoreConfig",
    "load_config",
    "make_converter",
    "structure",
]

T = TypeVar("T")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@attrs.frozen(kw_only=True)
class StoreConfig:
    """``[store]``: where state lives."""

    backend: Literal["memory", "sqlite"] = "memory"
    path: str = "imrobots.sqlite3"


@attrs.frozen(kw_only=True)
class RobotConfig:
    """``[robots.NAME]``: one robot."""

    name: str
    platform: str
    robot: str = "support"
    """A registered robot name or ``"package.module:Class"``."""
    settings: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    """The platform's settings; converted by the platform's settings class."""
    agent: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    """``use = "demo" | "openai" | "package.module:callable"`` and the agent's settings."""
    feedback_secret: Secret | None = None
    app_id: str | None = None
    """Robots sharing an ``app_id`` on one platform share one rate limiter."""
    policy: AccessPolicy = AccessPolicy()
    options: RuntimeOptions = RuntimeOptions()


@attrs.frozen(kw_only=True)
class Config:
    robots: Mapping[str, RobotConfig]
    store: StoreConfig = StoreConfig()
    path: Path | None = None


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

    factory: Any = sequence_factory
    converter.register_structure_hook_factory(
        lambda t: cols.is_sequence(t) and bool(typing.get_args(t)), factory
    )
    factory = mapping_factory
    converter.register_structure_hook_factory(
        lambda t: cols.is_mapping(t) and bool(typing.get_args(t)), factory
    )
    return converter


_converter = make_converter()


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


def structure(data: Any, cls: type[T], *, path: str, source: str | None = None) -> T:
    """Convert ``data`` to ``cls`` with the strict converter.

    Errors become one :class:`ConfigError` line naming ``source: path.of.field``
    (without the ``source:`` prefix when ``source`` is ``None``). Plugins and
    agents use this for their settings tables, so they fail like the rest of the
    config.
    """
    prefix = f"{source}: " if source else ""
    try:
        return _converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        messages = cattrs.transform_error(exc, path=path, format_exception=_describe)
        raise ConfigError(prefix + "; ".join(_tidy(m) for m in messages)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}{path}: {_describe(exc, cls)}") from None


def _tidy(message: str) -> str:
    text, _, where = message.rpartition(" @ ")
    where = re.sub(r"\[(['\"])(.*?)\1\]", r".\2", where).removeprefix("$.")
    return f"{where}: {text}" if where else text


def substitute(value: Any, *, path: str, source: str, env: Mapping[str, str]) -> Any:
    """Replace ``{{NAME}}`` placeholders in every string with environment variables."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(
                    f"{source}: {path} uses {{{{{name}}}}} but the environment variable "
                    f"{name} is not set"
                )
            return env[name]

        return _PLACEHOLDER.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: substitute(v, path=f"{path}.{k}" if path else k, source=source, env=env)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            substitute(v, path=f"{path}[{i}]", source=source, env=env) for i, v in enumerate(value)
        ]
    return value


def _from_seed_json(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The seed's single-robot ``config.json``: ``agent``, ``clientId``, ``clientSecret``."""
    unknown = set(data) - {"agent", "clientId", "clientSecret", "name", "platform"}
    if unknown:
        raise ConfigError(f"{source}: unknown keys: {', '.join(sorted(unknown))}")
    for key in ("clientId", "clientSecret"):
        if key not in data:
            raise ConfigError(f"{source}: {key}: required but missing")
        if not isinstance(data[key], str) or not data[key]:
            raise ConfigError(f"{source}: {key}: expected a non-empty string")
    agent = data.get("agent", "demo")
    if not isinstance(agent, str):
        raise ConfigError(f"{source}: agent: expected str")
    name = data.get("name", "support")
    return {
        "robots": {
            name: {
                "robot": "support",
                "platform": data.get("platform", "dingtalk"),
                "settings": {"client_id": data["clientId"], "client_secret": data["clientSecret"]},
                "agent": {"use": agent},
            }
        }
    }


def _read(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate a config file (without importing any platform)."""
    path = Path(path)
    source = str(path)
    env = os.environ if env is None else env
    data = _read(path)
    if path.suffix == ".json" and "robots" not in data:
        data = _from_seed_json(substitute(data, path="", source=source, env=env), source)
    else:
        data = substitute(data, path="", source=source, env=env)
    unknown = set(data) - {"robots", "store"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys: {', '.join(sorted(unknown))}")
    robots_raw = data.get("robots")
    if not isinstance(robots_raw, dict) or not robots_raw:
        raise ConfigError(f"{source}: no robots: add a [robots.NAME] table")
    robots: dict[str, RobotConfig] = {}
    for name, table in robots_raw.items():
        where = f"robots.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {where}: expected a table")
        if "platform" not in table:
            raise ConfigError(f"{source}: {where}.platform: required but missing")
        settings = table.get("settings", {})
        agent = table.get("agent", {})
        for key, value in (("settings", settings), ("agent", agent)):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {where}.{key}: expected a table")
        options = dict(table.get("options", {}))
        if "stream" in table:
            options["stream"] = table["stream"]
        rest = {
            k: v for k, v in table.items() if k not in ("settings", "agent", "options", "stream")
        }
        robots[name] = structure(
            {**rest, "name": name, "options": options}, RobotConfig, path=where, source=source
        )
        robots[name] = attrs.evolve(robots[name], settings=settings, agent=agent)
    store = structure(data.get("store", {}), StoreConfig, path="store", source=source)
    return Config(robots=robots, store=store, path=path)
