"""Scaffolds: ``imrobots new robot NAME`` and ``imrobots new platform NAME``.

Each writes a project that installs (``pip install -e .``) and passes its own tests:

* a **robot** application package: a :class:`~imrobots.Robot` subclass, an agent, the
  ``imrobots`` entry point that registers the robot by name, a ``robots.toml`` and tests
  written with :mod:`imrobots.testing`;
* a **platform** plugin: the entry point, a :class:`~imrobots.platform.Platform` subclass
  with its capabilities and settings, an event converter, a card renderer, an emulator of
  its (made-up) protocol with its :class:`~imrobots.emulation.EmulatorAdapter`, and the
  platform conformance suite wired in. It registers as ``planned``: it speaks no real
  platform's protocol until its author makes it.

Templates live in ``templates/KIND/`` as ``*.tmpl`` files whose paths and text hold
``@@name@@``, ``@@package@@`` and ``@@Class@@``.
"""

from __future__ import annotations

import keyword
import re
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

import attrs

from ..errors import ImrobotsError

__all__ = ["Scaffold", "ScaffoldError", "scaffold"]

Kind = Literal["robot", "platform"]

_ROBOT_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_PLATFORM_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


class ScaffoldError(ImrobotsError):
    """A scaffold cannot be written (a bad name, a directory in the way)."""


@attrs.frozen(kw_only=True)
class Scaffold:
    """What a scaffold was written with, and where."""

    kind: Kind
    name: str
    """The robot's registered name, or the platform's name."""
    package: str
    """The Python package written."""
    class_name: str
    directory: Path
    files: tuple[Path, ...]


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", name) if part)


def names_for(kind: Kind, name: str) -> tuple[str, str]:
    """``(package, class name)`` for a scaffold of ``kind`` called ``name``.

    :raises ScaffoldError: the name cannot be used.
    """
    if kind == "robot":
        if not _ROBOT_NAME.match(name):
            raise ScaffoldError(
                f"robot name {name!r}: use lowercase letters, digits, '-' and '_', "
                "starting with a letter (e.g. helpdesk or sales-assistant)"
            )
        package = name.replace("-", "_")
        clash = (
            "is a Python keyword"
            if keyword.iskeyword(package)
            else "is a module of Python's standard library, which it would shadow"
            if package in sys.stdlib_module_names
            else "is the scaffold's own tests directory"
            if package == "tests"
            else "is reserved for imrobots and its platform plugins"
            if package == "imrobots" or package.startswith("imrobots_")
            else None
        )
        if clash is not None:
            raise ScaffoldError(
                f"robot name {name!r}: its Python package, {package}, {clash}; "
                f"choose another name (e.g. my-{name})"
            )
        camel = _camel(name)
        return package, camel if camel.endswith("Robot") else f"{camel}Robot"
    if not _PLATFORM_NAME.match(name):
        raise ScaffoldError(
            f"platform name {name!r}: use lowercase letters, digits and '_', starting with "
            "a letter (e.g. telegram or my_chat)"
        )
    return f"imrobots_{name}", _camel(name)


def _templates(kind: Kind) -> Traversable:
    return resources.files("imrobots.scaffold") / "templates" / kind


def _walk(node: Traversable, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    found: list[tuple[tuple[str, ...], str]] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            found.extend(_walk(child, (*prefix, child.name)))
        elif child.name.endswith(".tmpl"):
            found.append(((*prefix, child.name.removesuffix(".tmpl")), child.read_text("utf-8")))
    return found


def scaffold(kind: Kind, name: str, directory: Path | None = None) -> Scaffold:
    """Write the ``kind`` scaffold called ``name`` into ``directory`` (default: ``./NAME``
    for a robot, ``./imrobots-NAME`` for a platform), which must not exist or be empty.

    :raises ScaffoldError: a bad name, a directory that is not empty, or a file that
        cannot be written.
    """
    package, class_name = names_for(kind, name)
    if directory is None:
        directory = Path(name if kind == "robot" else f"imrobots-{name}")
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ScaffoldError(f"{directory} already exists and is not an empty directory")
    tokens = {"@@name@@": name, "@@package@@": package, "@@Class@@": class_name}

    def fill(text: str) -> str:
        for token, value in tokens.items():
            text = text.replace(token, value)
        return text

    written: list[Path] = []
    for parts, text in _walk(_templates(kind)):
        path = directory.joinpath(*(fill(part) for part in parts))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(fill(text), encoding="utf-8")
        except OSError as exc:
            raise ScaffoldError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(path)
    return Scaffold(
        kind=kind,
        name=name,
        package=package,
        class_name=class_name,
        directory=directory,
        files=tuple(written),
    )
