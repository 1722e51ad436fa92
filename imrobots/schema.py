"""A JSON Schema of the config file, made from the config classes (``imrobots config schema``).

It covers the TOML config and the seed's ``config.json``. Each robot's
``settings`` table is checked against the settings class of its platform, for
every platform available here, and its ``agent`` table against the built-in
agents' settings. Descriptions come from the fields' docstrings; numeric bounds
from :data:`imrobots.config.BOUNDS` and from attrs validators such as
``attrs.validators.gt(0)``. Any string may hold a ``{{NAME}}`` placeholder, so
fields with a fixed set of strings also accept one.

The schema is written for JSON Schema draft 7, which editors' TOML support
(taplo, Even Better TOML) reads.
"""

from __future__ import annotations

import ast
import collections.abc
import inspect
import itertools
import re
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from .config import BOUNDS, PLACEHOLDER, Config, RobotConfig, StoreConfig
from .plugins import PluginManager, get_plugin_manager
from .secret import Secret
from .streaming import StreamPolicy

__all__ = ["SCHEMA_ID", "config_schema"]

SCHEMA_ID = "https://imrobots.invalid/schemas/robots.schema.json"
"""The schema's ``$id`` (not a served URL: save the schema next to your config)."""

Schema = dict[str, Any]
_PLACEHOLDER_PATTERN = PLACEHOLDER.pattern


def _docstrings(cls: type) -> dict[str, str]:
    """The docstring under each field of ``cls`` (and of its attrs base classes)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not attrs.has(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body
        if not body or not isinstance(body[0], ast.ClassDef):
            continue
        statements = body[0].body
        for statement, following in itertools.pairwise(statements):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                found[statement.target.id] = inspect.cleandoc(following.value.value)
    return found


def _summary(doc: str | None) -> str | None:
    if not doc:
        return None
    return inspect.cleandoc(doc).split("\n\n", 1)[0].replace("\n", " ")


def _plain(text: str) -> str:
    """reStructuredText roles and literals as plain text, for an editor's tooltip; lines
    of a paragraph joined."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text).replace("``", "`")
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


def _numeric_bounds(validator: Any) -> list[tuple[str, float]]:
    """``(op, bound)`` pairs of attrs number validators (``gt``, ``ge``, ``lt``, ``le``),
    looking inside ``and_`` and ``optional``."""
    if validator is None:
        return []
    found: list[tuple[str, float]] = []
    op, bound = getattr(validator, "compare_op", None), getattr(validator, "bound", None)
    if isinstance(op, str) and isinstance(bound, int | float):
        found.append((op, float(bound)))
    for inner in getattr(validator, "_validators", ()) or ():
        found.extend(_numeric_bounds(inner))
    found.extend(_numeric_bounds(getattr(validator, "validator", None)))
    return found


_KEYWORDS = {">": "exclusiveMinimum", ">=": "minimum", "<": "exclusiveMaximum", "<=": "maximum"}


def _jsonable(value: Any) -> bool:
    if isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list | tuple):
        return all(_jsonable(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


class _Builder:
    """Walks attrs classes into schema definitions."""

    def __init__(self) -> None:
        self.definitions: dict[str, Schema] = {}

    def ref(
        self, cls: type, *, exclude: tuple[str, ...] = (), extra: Schema | None = None
    ) -> Schema:
        name = cls.__name__
        if name not in self.definitions:
            self.definitions[name] = {}  # a placeholder against recursion
            self.definitions[name] = self.object(cls, exclude=exclude, extra=extra)
        return {"$ref": f"#/definitions/{name}"}

    def object(
        self, cls: type, *, exclude: tuple[str, ...] = (), extra: Schema | None = None
    ) -> Schema:
        attrs.resolve_types(cls)
        docs = _docstrings(cls)
        bounds = BOUNDS.get(cls, {})
        properties: Schema = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            if field.name in exclude or field.name.startswith("_"):
                continue
            key = field.alias or field.name
            schema = self.type(field.type)
            if field.name in docs:
                schema = {**schema, "description": _plain(docs[field.name])}
            for op, limit in _numeric_bounds(field.validator):
                schema[_KEYWORDS[op]] = limit
            if field.name in bounds:
                bound = bounds[field.name]
                schema[_KEYWORDS[bound.op]] = bound.limit
            if field.default is attrs.NOTHING:
                required.append(key)
            else:
                default = field.default
                if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                    default = None if default.takes_self else default.factory()
                if default is not None and _jsonable(default) and not isinstance(default, Secret):
                    schema["default"] = list(default) if isinstance(default, tuple) else default
            properties[key] = schema
        result: Schema = {"type": "object"}
        summary = _summary(cls.__doc__)
        if summary:
            result["description"] = _plain(summary)
        result["properties"] = {**properties, **(extra or {})}
        if required:
            result["required"] = required
        result["additionalProperties"] = False
        return result

    def type(self, tp: Any) -> Schema:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is Any or tp is object:
            return {}
        if tp is str or tp is Secret:
            return {"type": "string"}
        if tp is bool:
            return {"type": "boolean"}
        if tp is int:
            return {"type": "integer"}
        if tp is float:
            return {"type": "number"}
        if origin is Literal:
            values = list(args)
            schema: Schema = {"enum": values}
            if all(isinstance(v, str) for v in values):  # a placeholder may stand for one
                return {"anyOf": [schema, {"type": "string", "pattern": _PLACEHOLDER_PATTERN}]}
            return schema
        if origin in (typing.Union, types.UnionType):
            options = [a for a in args if a is not type(None)]  # TOML has no null: omit the key
            if len(options) == 1:
                return self.type(options[0])
            return {"anyOf": [self.type(a) for a in options]}
        if origin in (tuple, list, collections.abc.Sequence) and args:
            return {"type": "array", "items": self.type(args[0])}
        if origin in (dict, collections.abc.Mapping) and len(args) == 2:
            values_schema = self.type(args[1])
            return {
                "type": "object",
                **({"additionalProperties": values_schema} if values_schema else {}),
            }
        if inspect.isclass(tp) and attrs.has(tp):
            return self.ref(tp)
        return {}


def _agents(builder: _Builder) -> Schema:
    from .demo_agent import DemoAgentSettings
    from .openai_agent import OpenAIAgentSettings

    use = {
        "type": "string",
        "description": 'The agent: "demo" (offline FAQ agent), "openai" (any OpenAI-compatible '
        'server) or "package.module:callable".',
        "anyOf": [
            {"enum": ["demo", "openai"]},
            {"pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"},
            {"pattern": _PLACEHOLDER_PATTERN},
        ],
    }
    rules = []
    for name, cls in (("demo", DemoAgentSettings), ("openai", OpenAIAgentSettings)):
        definition = builder.object(cls, extra={"use": {"const": name}})
        builder.definitions[f"{name}_agent"] = definition
        rules.append(
            {
                "if": {"properties": {"use": {"const": name}}, "required": ["use"]},
                "then": {"$ref": f"#/definitions/{name}_agent"},
            }
        )
    return {
        "type": "object",
        "description": "The agent that answers, and its settings.",
        "properties": {"use": use},
        "required": ["use"],
        "allOf": rules,
    }


def config_schema(manager: PluginManager | None = None) -> Schema:
    """The JSON Schema (draft 7) of a config file, with the settings of every platform
    available through ``manager`` (default: the process-wide plugin manager)."""
    from .platform import resolve_object

    manager = manager or get_plugin_manager()
    builder = _Builder()
    platforms: dict[str, Any] = {}
    for name, status in manager.platforms().items():
        if not status.available:
            continue
        settings_class = resolve_object(status.spec.settings) if status.spec.settings else None
        platforms[name] = (status.spec.description, settings_class)
    robot = builder.object(
        RobotConfig,
        exclude=("name",),
        extra={
            "stream": {
                **builder.ref(StreamPolicy),
                "description": _plain(
                    "How answers stream into cards (see Answer streaming); "
                    "the default comes from the platform's capabilities."
                ),
            }
        },
    )
    robot["properties"]["platform"] = {
        "description": "The platform it runs on; one of the platforms available here "
        "(see imrobots platforms).",
        "enum": sorted(platforms),
    }
    robot["properties"]["agent"] = _agents(builder)
    robot["properties"]["settings"] = {
        "type": "object",
        "description": "The platform's own settings (see its page).",
    }
    rules = []
    for name, (description, settings_class) in sorted(platforms.items()):
        then: Schema
        if settings_class is None:
            then = {"properties": {"settings": {"type": "object", "maxProperties": 0}}}
        else:
            settings_ref = builder.ref(settings_class)
            then = {"properties": {"settings": settings_ref}}
        rule: Schema = {
            "if": {"properties": {"platform": {"const": name}}, "required": ["platform"]},
            "then": then,
        }
        if description:
            rule["description"] = description
        rules.append(rule)
    if rules:
        robot["allOf"] = rules
    builder.definitions["RobotConfig"] = robot
    store = builder.ref(StoreConfig)
    config: Schema = {
        "type": "object",
        "description": _plain(_summary(Config.__doc__) or "An imrobots config file."),
        "properties": {
            "robots": {
                "type": "object",
                "description": "One table per robot: [robots.NAME].",
                "minProperties": 1,
                "additionalProperties": {"$ref": "#/definitions/RobotConfig"},
            },
            "store": store,
        },
        "required": ["robots"],
        "additionalProperties": False,
    }
    builder.definitions["Config"] = config
    builder.definitions["SeedConfig"] = {
        "type": "object",
        "description": (
            "The seed tutorial's config.json: one robot, on the platform whose plugin "
            'claims such files unless "platform" names another.'
        ),
        "properties": {
            "$schema": {"type": "string"},
            "agent": {"type": "string", "description": "demo, openai or package.module:callable"},
            "clientId": {"type": "string", "minLength": 1, "description": "The app's Client ID"},
            "clientSecret": {
                "type": "string",
                "minLength": 1,
                "description": "The app's Client Secret (use a {{PLACEHOLDER}})",
            },
            "name": {"type": "string"},
            "platform": {"type": "string"},
        },
        "required": ["clientId", "clientSecret"],
        "additionalProperties": False,
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "imrobots config",
        "description": "Robots, their platforms, agents and options: a robots.toml, or the "
        "seed's config.json. Made by `imrobots config schema` from the config classes.",
        "if": {"required": ["clientId"]},
        "then": {"$ref": "#/definitions/SeedConfig"},
        "else": {"$ref": "#/definitions/Config"},
        "definitions": dict(sorted(builder.definitions.items())),
    }
