"""Plugin loading and the registries of platforms, robots and emulators.

Loading is lazy (nothing happens at import), cached, and resilient: each entry
point of the ``imrobots`` group is loaded on its own, and a broken one is
logged with its name, version and error while the others load.
``IMROBOTS_LOAD_PLUGINS=a,b`` loads only the named entry points (empty: none);
``IMROBOTS_STRICT_PLUGINS=1`` raises instead of logging.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .environment import DISABLE_PLUGIN_AUTOLOAD, STRICT_PLUGINS, env_flag
from .errors import PlatformUnavailable, PluginError
from .platform import Platform, PlatformSpec, resolve_object

__all__ = [
    "PluginInfo",
    "PluginManager",
    "get_plugin_manager",
    "hookimpl",
    "reset_plugin_manager",
]

log = logging.getLogger("imrobots.plugins")

hookimpl = pluggy.HookimplMarker("imrobots")
"""Marker for hook implementations: decorate functions in your plugin module with it."""

ENTRY_POINT_GROUP = "imrobots"
BUILTIN_PLUGINS = ("imrobots.builtin",)


@attrs.frozen(kw_only=True)
class PluginInfo:
    """One plugin as loaded (or as it failed to load)."""

    name: str
    distribution: str | None
    version: str | None
    error: str | None = None


@attrs.frozen(kw_only=True)
class PlatformStatus:
    """A registered platform and whether it can be used here.

    ``available`` is false when the platform is planned (not implemented in this
    version) or when its SDK (``missing``) is not installed.
    """

    spec: PlatformSpec
    source: str
    available: bool
    missing: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def planned(self) -> bool:
        """Registered, but not implemented in this version."""
        return self.spec.status == "planned"


def _robot_class(value: object) -> bool:
    """Whether ``value`` is a class ``register_robots`` may register: a subclass of
    :class:`imrobots.Robot`."""
    from .robot import Robot  # robot.py imports much of the core; loading plugins needs none

    return isinstance(value, type) and issubclass(value, Robot)


class PluginManager:
    """Wraps a :class:`pluggy.PluginManager` with imrobots' registries."""

    def __init__(self, *, load_entry_points: bool = True, strict: bool | None = None) -> None:
        self.pm = pluggy.PluginManager("imrobots")
        self.pm.add_hookspecs(hookspecs)
        self.strict = env_flag(STRICT_PLUGINS, default=False) if strict is None else strict
        self.plugins: list[PluginInfo] = []
        self._load_entry_points = load_entry_points
        self._loaded = False
        self._platforms: dict[str, tuple[PlatformSpec, str]] | None = None
        self._robots: dict[str, tuple[Any, str]] | None = None
        self._emulators: dict[str, tuple[Any, str]] | None = None

    @property
    def hook(self) -> Any:
        self.load()
        return self.pm.hook

    # ---------------------------------------------------------------- loading
    def load(self) -> None:
        """Register the built-in plugins and the allowed entry points, once."""
        if self._loaded:
            return
        self._loaded = True
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self.pm.register(module, name=module_name)
        if self._load_entry_points:
            self._load_from_entry_points()
        self.pm.check_pending()

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object (module or instance with hookimpls) by hand."""
        self.load()
        self.pm.register(plugin, name=name)
        self._platforms = self._robots = self._emulators = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._platforms = self._robots = self._emulators = None

    def _load_from_entry_points(self) -> None:
        allowed_env = os.environ.get("IMROBOTS_LOAD_PLUGINS")
        allowed = (
            None
            if allowed_env is None
            else {n.strip() for n in allowed_env.split(",") if n.strip()}
        )
        seen: set[str] = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            if allowed is not None and ep.name not in allowed:
                continue
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                self.plugins.append(
                    PluginInfo(name=ep.name, distribution=dist_name, version=version, error=message)
                )
                if self.strict:
                    raise PluginError(
                        f"plugin {ep.name!r} ({dist_name} {version}) failed to load: {message}"
                    ) from exc
                log.warning(
                    "could not load imrobots plugin %r (%s %s): %s",
                    ep.name,
                    dist_name,
                    version,
                    message,
                )
                continue
            self.plugins.append(PluginInfo(name=ep.name, distribution=dist_name, version=version))
        if allowed is not None:
            for name in sorted(allowed - seen):
                log.warning("plugin %r named in IMROBOTS_LOAD_PLUGINS could not be found", name)

    # ---------------------------------------------------------------- registries
    def _collect(self, hook_name: str) -> dict[str, tuple[Any, str]]:
        self.load()
        found: dict[str, tuple[Any, str]] = {}
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            source = self.pm.get_name(impl.plugin) or repr(impl.plugin)

            def register(name: object, obj: object = None, *, _source: str = source) -> None:
                key, value = (name.name, name) if isinstance(name, PlatformSpec) else (name, obj)
                if not isinstance(key, str) or not key:
                    raise PluginError(f"plugin {_source!r} registered something without a name")
                if hook_name == "register_robots" and not _robot_class(value):
                    problem = (
                        f"plugin {_source!r} registered robot {key!r} as {value!r}, which is "
                        "not a subclass of imrobots.Robot"
                    )
                    if self.strict:
                        raise PluginError(problem)
                    log.warning(
                        "%s; left out (IMROBOTS_STRICT_PLUGINS=1 makes it an error)", problem
                    )
                    return
                if key in found:
                    raise PluginError(
                        f"{hook_name.removeprefix('register_')[:-1]} {key!r} is registered twice: "
                        f"by {found[key][1]!r} and by {_source!r}"
                    )
                found[key] = (value, _source)

            impl.function(register=register)
        return found

    def platforms(self) -> dict[str, PlatformStatus]:
        """Every registered platform with its availability, by name."""
        if self._platforms is None:
            self._platforms = self._collect("register_platforms")
        result = {}
        for name, (spec, source) in sorted(self._platforms.items()):
            missing = tuple(m for m in spec.requires if not _importable(m))
            result[name] = PlatformStatus(
                spec=spec,
                source=source,
                available=not missing and spec.status == "available",
                missing=missing,
            )
        return result

    def seed_platform(self) -> str | None:
        """The name of the registered platform a ``config.json`` without ``"platform"``
        runs on (:attr:`PlatformSpec.seed_config`), or ``None`` when none claims it.

        :raises PluginError: more than one platform claims it."""
        claims = sorted(
            name for name, status in self.platforms().items() if status.spec.seed_config
        )
        if len(claims) > 1:
            raise PluginError(
                f"platforms {', '.join(map(repr, claims))} all claim config.json files without "
                '"platform": only one may (PlatformSpec.seed_config)'
            )
        return claims[0] if claims else None

    def robots(self) -> dict[str, Any]:
        """Registered robot classes by name."""
        if self._robots is None:
            self._robots = self._collect("register_robots")
        return {name: cls for name, (cls, _) in self._robots.items()}

    def emulators(self) -> dict[str, Any]:
        """Registered emulator factories by platform name (unresolved)."""
        if self._emulators is None:
            self._emulators = self._collect("register_emulators")
        return {name: factory for name, (factory, _) in self._emulators.items()}

    def platform_spec(self, name: str, *, planned: bool = False) -> PlatformSpec:
        """The spec of an available platform, or a one-line error saying what to do.

        Raises :class:`PluginError` for an unknown or (unless ``planned``: for a plugin's
        own conformance tests) a planned platform, and :class:`PlatformUnavailable` (with
        the install command) when its SDK is missing.
        """
        platforms = self.platforms()
        status = platforms.get(name)
        if status is None:
            known = ", ".join(platforms) or "none"
            hint = self.closest_platform(name)
            hint = f" (did you mean {hint}?)" if hint else ""
            raise PluginError(f"unknown platform {name!r}{hint}; choose one of: {known}")
        if status.planned and not planned:
            raise PluginError(
                f"platform {name!r} is planned, not available in this version"
                " (see imrobots platforms)"
            )
        if status.missing:
            hint = f": {status.spec.install}" if status.spec.install else ""
            raise PlatformUnavailable(
                f"platform {name!r} needs {', '.join(status.missing)}, which is not installed{hint}"
            )
        return status.spec

    def closest_platform(self, name: str) -> str | None:
        """The registered platform ``name`` most likely means, or ``None``: one whose name
        or one of whose :attr:`PlatformSpec.aliases` is ``name`` ignoring case and anything
        but letters and digits, else the closest of them (:func:`difflib.get_close_matches`,
        cutoff 0.6)."""
        names: dict[str, str] = {}
        claimed: dict[str, set[str]] = {}
        for platform, status in self.platforms().items():
            names[_folded(platform)] = platform
            for alias in status.spec.aliases:
                claimed.setdefault(_folded(alias), set()).add(platform)
        for alias, owners in claimed.items():
            if alias and alias not in names and len(owners) == 1:
                names[alias] = next(iter(owners))
        word = _folded(name)
        if word in names:
            return names[word]
        close = difflib.get_close_matches(word, list(names), n=1, cutoff=0.6)
        return names[close[0]] if close else None

    def create_platform(self, name: str, settings: object, *, planned: bool = False) -> Platform:
        """Build a connection to platform ``name``; refuses what :meth:`platform_spec` refuses
        (a planned platform too, unless ``planned``)."""
        spec = self.platform_spec(name, planned=planned)
        factory: Callable[..., Platform] = resolve_object(spec.factory)
        return factory(settings)


def _folded(name: str) -> str:
    """``name`` lower-cased, with only its letters and digits (``Wechat-Work``: ``wechatwork``)."""
    return "".join(c for c in name.casefold() if c.isalnum())


def _importable(module: str) -> bool:
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager(
            load_entry_points=not env_flag(DISABLE_PLUGIN_AUTOLOAD, default=False)
        )
    return _manager


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Replace (or forget) the process-wide manager; for tests."""
    global _manager
    _manager = manager
