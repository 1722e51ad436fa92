"""Build running robots from a :class:`~imrobots.config.Config`."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import attrs

from .agents import as_agent
from .config import Config, RobotConfig, structure
from .errors import ConfigError, ImrobotsError
from .platform import Platform, resolve_object
from .plugins import PluginManager, get_plugin_manager
from .robot import Robot
from .runtime import RobotRuntime
from .store import MemoryStore, Store

log = logging.getLogger(__name__)

__all__ = [
    "PreparedRobot",
    "build_agent",
    "build_runtimes",
    "build_store",
    "prepare_robot",
    "store_problem",
]


def build_agent(settings: Mapping[str, Any], *, where: str) -> object | None:
    """Make the agent a ``[robots.NAME.agent]`` table describes (``None`` if it is empty)."""
    if not settings:
        return None
    options = dict(settings)
    use = options.pop("use", None)
    if not isinstance(use, str) or not use:
        raise ConfigError(f'{where}.use: expected "demo", "openai" or "package.module:callable"')
    if use == "demo":
        from .demo_agent import DemoAgent

        return DemoAgent.from_settings(options, path=where)
    if use == "openai":
        from .openai_agent import OpenAIAgent

        return OpenAIAgent.from_settings(options, path=where)
    if ":" not in use:
        raise ConfigError(
            f'{where}.use: unknown agent {use!r}; use "demo", "openai" or "package.module:callable"'
        )
    target = _import(use, f"{where}.use")
    if inspect.isclass(target):
        from_settings = getattr(target, "from_settings", None)
        try:
            agent: object = from_settings(options) if callable(from_settings) else target(**options)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # settings the class does not take
            raise ConfigError(f"{where}: {use!r} refused its settings: {exc}") from None
    else:
        if options:
            raise ConfigError(
                f"{where}: {use!r} is a function and takes no settings: {', '.join(options)}"
            )
        agent = target
    try:
        as_agent(agent)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.use: {use!r} is not an agent: {exc}") from None
    return agent


def _import(ref: str, where: str) -> Any:
    """``resolve_object(ref)``, its failures (a missing module or name, a syntax error or
    an exception raised by the module's code) a :class:`ConfigError` naming ``where``."""
    try:
        return resolve_object(ref)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot import {ref!r}: {exc}") from None
    except SyntaxError as exc:
        raise ConfigError(
            f"{where}: cannot import {ref!r}: syntax error in {exc.filename}, "
            f"line {exc.lineno}: {exc.msg}"
        ) from None
    except Exception as exc:
        log.debug("importing %r failed", ref, exc_info=True)
        raise ConfigError(
            f"{where}: cannot import {ref!r}: its module raised {type(exc).__name__}: {exc} "
            "(--log-level debug shows the traceback)"
        ) from None


def _robot_class(ref: str, manager: PluginManager, where: str) -> type[Robot]:
    registered = manager.robots()
    if ref in registered:
        cls = registered[ref]
    elif ":" in ref:
        cls = _import(ref, f"{where}.robot")
    else:
        known = ", ".join(sorted(registered)) or "none"
        raise ConfigError(
            f"{where}.robot: unknown robot {ref!r}; registered robots: {known} "
            "(or give 'package.module:Class')"
        )
    if not (inspect.isclass(cls) and issubclass(cls, Robot)):
        raise ConfigError(f"{where}.robot: {ref!r} is not a subclass of imrobots.Robot")
    return cls


@attrs.frozen(kw_only=True)
class PreparedRobot:
    """A robot's config resolved: its class, platform settings and agent, not yet connected."""

    config: RobotConfig
    robot_class: type[Robot]
    platform_settings: object = attrs.field(repr=False)
    agent: object | None = attrs.field(repr=False)

    def create_platform(self, manager: PluginManager) -> Platform:
        return manager.create_platform(self.config.platform, self.platform_settings)


def prepare_robot(
    config: RobotConfig, *, source: str, manager: PluginManager | None = None
) -> PreparedRobot:
    """Validate everything about one robot that can be checked without connecting."""
    manager = manager or get_plugin_manager()
    where = f"robots.{config.name}"
    try:
        spec = manager.platform_spec(config.platform)
    except ImrobotsError as exc:
        raise ConfigError(f"{source}: {where}.platform: {exc}") from None
    settings: object
    if spec.settings is None:
        if config.settings:
            raise ConfigError(
                f"{source}: {where}.settings: platform {spec.name!r} takes no settings"
            )
        settings = None
    else:
        settings = structure(
            dict(config.settings),
            resolve_object(spec.settings),
            path=f"{where}.settings",
            source=source,
        )
    try:
        robot_class = _robot_class(config.robot, manager, where)
        agent = build_agent(config.agent, where=f"{where}.agent")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return PreparedRobot(
        config=config, robot_class=robot_class, platform_settings=settings, agent=agent
    )


def build_store(config: Config) -> Store:
    """The store of the config's ``[store]`` table (nothing connects yet)."""
    if config.store.backend == "sqlite":
        from .sqlite_store import SQLiteStore

        return SQLiteStore(config.store.path)
    if config.store.backend == "redis":
        source = str(config.path) if config.path else "config"
        try:
            from .redis_store import RedisStore
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] != "redis":
                raise
            raise ConfigError(
                f'{source}: store.backend: "redis" needs the redis package, which is not'
                ' installed: pip install "imrobots[redis]"'
            ) from None
        try:
            return RedisStore(config.store.url, prefix=config.store.prefix)
        except ConfigError as exc:
            raise ConfigError(f"{source}: store.url: {exc}") from None
    return MemoryStore()


def store_problem(config: Config) -> str | None:
    """What :func:`build_store` would refuse in the config's ``[store]`` table, found
    without connecting or creating anything (the redis package missing, a URL that is no
    Redis URL, a SQLite file whose directory does not exist), as one line naming the file
    and the field; ``None`` if nothing."""
    source = str(config.path) if config.path else "config"
    if config.store.backend == "sqlite":
        from .sqlite_store import path_problem

        problem = path_problem(config.store.path)
        if problem is None:
            return None
        return (
            f"{source}: store.path: {problem} (a relative path is taken from the directory "
            "imrobots starts in)"
        )
    if config.store.backend != "redis":
        return None
    try:
        from .redis_store import url_problem
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "redis":
            raise
        return (
            f'{source}: store.backend: "redis" needs the redis package, which is not'
            ' installed: pip install "imrobots[redis]"'
        )
    problem = url_problem(config.store.url)
    return None if problem is None else f"{source}: store.url: {problem}"


def build_runtimes(
    config: Config,
    names: list[str] | None = None,
    *,
    manager: PluginManager | None = None,
    store: Store | None = None,
    hooks: Any = None,
) -> list[RobotRuntime]:
    """Create (not start) a runtime for each named robot (once, however often it is
    named), or all of them."""
    manager = manager or get_plugin_manager()
    source = str(config.path) if config.path else "config"
    selected = list(dict.fromkeys(names)) if names else list(config.robots)
    unknown = [n for n in selected if n not in config.robots]
    if unknown:
        raise ConfigError(
            f"{source}: no robot named {', '.join(map(repr, unknown))}; "
            f"the file defines: {', '.join(config.robots)}"
        )
    prepared = [prepare_robot(config.robots[n], source=source, manager=manager) for n in selected]
    store = store or build_store(config)
    runtimes = []
    for item in prepared:
        cfg = item.config
        runtimes.append(
            RobotRuntime(
                name=cfg.name,
                robot=item.robot_class(agent=item.agent),
                platform=item.create_platform(manager),
                store=store,
                options=cfg.options,
                policy=cfg.policy,
                feedback_secret=cfg.feedback_secret.get() if cfg.feedback_secret else None,
                hooks=hooks if hooks is not None else manager.hook,
                app_id=cfg.app_id,
            )
        )
    return runtimes
