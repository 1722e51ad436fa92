"""``imrobots demo``: every installed platform's emulator, the support robot on each, and
the web console, all on 127.0.0.1 with no account; ``imrobots console --config FILE``:
the same for the robots of a config file, each on an emulator of its platform."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .config import PLACEHOLDER, ConfigProblems, check_config, structure
from .console import Console, ConsoleStore
from .console.server import check_binding
from .emulation import EmulatorAdapter, MemoryEmulator
from .examples import SupportRobot
from .memory import MemorySettings
from .platform import Platform, resolve_object
from .plugins import PluginManager, get_plugin_manager
from .runtime import RobotRuntime, RuntimeOptions

__all__ = [
    "ConfigConsole",
    "Demo",
    "demo_agent",
    "emulator_takes",
    "make_emulator",
    "platform_for",
    "replaced_settings_notes",
]

log = logging.getLogger("imrobots.demo")


def demo_agent(env: dict[str, str] | None = None) -> tuple[object, str]:
    """The built-in demo agent, or an OpenAI-compatible one when the environment configures it."""
    env = dict(os.environ) if env is None else env
    if env.get("OPENAI_BASE_URL") or env.get("OPENAI_API_KEY"):
        from .openai_agent import OpenAIAgent

        agent = OpenAIAgent(
            model=env.get("OPENAI_MODEL") or None,
            base_url=env.get("OPENAI_BASE_URL") or None,
            api_key=env.get("OPENAI_API_KEY") or None,
            system_prompt="You are a friendly, concise customer-service agent.",
        )
        return (
            agent,
            f"OpenAI-compatible model {agent.model} at {agent.base_url or 'api.openai.com'}",
        )
    from .demo_agent import DemoAgent

    return DemoAgent(delay=0.04), (
        "built-in demo agent "
        "(set OPENAI_BASE_URL and OPENAI_MODEL to use an OpenAI-compatible server)"
    )


def make_emulator(name: str, manager: PluginManager, **options: Any) -> EmulatorAdapter:
    """Create the registered emulator of platform ``name`` (the memory one is built in).

    ``options`` go to the plugin's factory: ``port``, and ``client_secret`` (the emulated
    app's secret, for a config that stays valid across restarts) when the factory takes one.
    """
    if name == "memory":
        return MemoryEmulator()
    factories = manager.emulators()
    if name not in factories:
        known = ", ".join(sorted(["memory", *factories]))
        raise ValueError(
            f"no emulator for platform {name!r}{_hint(manager, name)}; emulators: {known}"
        )
    manager.platform_spec(name)  # raises with the install command when the SDK is missing
    factory: Callable[..., Any] = resolve_object(factories[name])
    if "client_secret" in options and not _takes(factory, "client_secret"):
        raise ValueError(
            f"the {name} emulator cannot keep a fixed client secret (its factory "
            f"{factories[name]!r} has no client_secret parameter)"
        )
    emulator = factory(**options)
    if not isinstance(emulator, EmulatorAdapter):
        raise TypeError(f"the {name} emulator factory did not return an EmulatorAdapter")
    return emulator


def emulator_takes(name: str, manager: PluginManager, option: str) -> bool:
    """Whether platform ``name``'s emulator factory takes the keyword ``option``."""
    factories = manager.emulators()
    if name not in factories:
        return False
    return _takes(resolve_object(factories[name]), option)


def _takes(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` has a parameter ``name`` (not merely ``**kwargs``)."""
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _hint(manager: PluginManager, name: str) -> str:
    """`` (did you mean NAME?)`` for a platform ``name`` that is not one, when a registered
    platform's name or alias is close (:meth:`PluginManager.closest_platform`)."""
    meant = manager.closest_platform(name)
    return f" (did you mean {meant}?)" if meant and meant != name else ""


def import_emulators(manager: PluginManager, names: Sequence[str] | None = None) -> None:
    """Import the plugins and the emulator factories of platforms ``names`` (default: all)
    ahead of :meth:`Demo.start`, which would import them inside the event loop. One that
    fails to import is left for :meth:`Demo.start` to report (as a platform skipped)."""
    for name, factory in manager.emulators().items():
        if names is None or name in names:
            with contextlib.suppress(Exception):
                resolve_object(factory)


def platform_for(
    name: str,
    emulator: EmulatorAdapter,
    manager: PluginManager,
    settings: Mapping[str, Any] | None = None,
    *,
    path: str | None = None,
    source: str = "demo",
) -> Platform:
    """A platform connection for a robot on ``emulator``, built from its robot settings.

    ``settings`` (a robot's own ``[robots.NAME.settings]``) are kept where the emulator's
    settings do not replace them (credentials and endpoints)."""
    platform = emulator.create_platform()
    if platform is not None:
        return platform
    return _settings_platform(name, emulator, manager, settings, path=path, source=source)


def _settings_platform(
    name: str,
    emulator: EmulatorAdapter,
    manager: PluginManager,
    settings: Mapping[str, Any] | None,
    *,
    path: str | None,
    source: str,
) -> Platform:
    """The platform of :func:`platform_for` built from ``settings`` under the emulator's."""
    spec = manager.platform_spec(name)
    structured: object = None
    if spec.settings is not None:
        structured = structure(
            {**(settings or {}), **emulator.robot_settings()},
            resolve_object(spec.settings),
            path=path or f"{name} emulator settings",
            source=source,
        )
    return manager.create_platform(name, structured)


def replaced_settings_notes(
    where: str,
    settings: Mapping[str, Any],
    emulator_settings: Mapping[str, Any],
    unset: Sequence[str] = (),
    *,
    own_platform: bool = False,
) -> list[str]:
    """What ``imrobots console --config`` did with a robot's own ``settings`` (its
    ``[robots.NAME.settings]``, at ``where``), one line per setting, by name only (a
    value is never shown): each one the emulator's ``emulator_settings`` replace (its
    credentials and endpoints), whether or not its environment variable is set; with
    ``own_platform`` (the emulator built the robot's platform from its own settings), each
    other one too, as not used; and each of ``unset`` (paths of settings whose variable is
    not set) that is neither, as used as written."""
    notes: list[str] = []
    missing: dict[str, list[str]] = {}
    for path in unset:
        key = path.removeprefix(where + ".").split(".", 1)[0].split("[", 1)[0]
        missing.setdefault(key, []).append(path)
    for key, value in settings.items():
        unset_note = " (its environment variable is not set)" if key in missing else ""
        if key in emulator_settings and emulator_settings[key] != value:
            notes.append(f"{where}.{key}: replaced by the emulator's{unset_note}")
        elif own_platform and key not in emulator_settings:
            notes.append(
                f"{where}.{key}: not used: the emulator builds this robot's platform from "
                f"its own settings{unset_note}"
            )
        else:
            notes += [
                f"{path}: its environment variable is not set; used as written"
                for path in missing.get(key, ())
            ]
    return notes


@attrs.define
class DemoRobot:
    platform: str
    emulator: EmulatorAdapter
    runtime: RobotRuntime
    agent: str = ""
    """How the agent was configured (``use``), when it came from a config file."""


class Demo:
    """Starts emulators, robots and the console; :meth:`stop` takes them all down."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        platforms: list[str] | None = None,
        manager: PluginManager | None = None,
        agent: object | None = None,
        token: str | None = None,
        public_hosts: Sequence[str] = (),
    ) -> None:
        check_binding(host, token)
        self.token = token
        self.public_hosts = tuple(public_hosts)
        self.manager = manager or get_plugin_manager()
        self.host = host
        self.port = port
        self.wanted = platforms
        self.agent = agent
        self.robots: list[DemoRobot] = []
        self.skipped: dict[str, str] = {}
        self.console: Console | None = None

    def _platform_names(self) -> list[str]:
        names = ["memory", *sorted(self.manager.emulators())]
        if self.wanted is not None:
            unknown = [n for n in self.wanted if n not in names]
            if unknown:
                hints = "".join(_hint(self.manager, n) for n in unknown[:1])
                raise ValueError(
                    f"no emulator for {', '.join(unknown)}{hints}; emulators: {', '.join(names)}"
                )
            names = [n for n in names if n in self.wanted]
        return names

    async def start(self) -> str:
        """Start everything; return the console's URL."""
        for name in self._platform_names():
            try:
                emulator = make_emulator(name, self.manager)
            except Exception as exc:  # a platform we cannot run is skipped, with the reason
                self.skipped[name] = str(exc)
                continue
            await emulator.start()
            runtime = RobotRuntime(
                name="support",
                robot=SupportRobot(agent=self.agent),
                platform=platform_for(name, emulator, self.manager),
                store=ConsoleStore(),
                options=RuntimeOptions(stale_after=None),
                hooks=self.manager.hook,
            )
            await runtime.start()
            self.robots.append(DemoRobot(platform=name, emulator=emulator, runtime=runtime))
        self.console = Console(
            {r.platform: r.emulator for r in self.robots},
            {r.platform: r.runtime for r in self.robots},
            host=self.host,
            port=self.port,
            token=self.token,
            public_hosts=self.public_hosts,
        )
        await self.console.start()
        return self.console.url

    async def stop(self) -> None:
        if self.console is not None:
            await self.console.stop()
        for robot in self.robots:
            await robot.runtime.stop(timeout=5)
            await robot.emulator.stop()


class ConfigConsole:
    """The robots of a config file, each on an emulator of its platform, and the console
    (``imrobots console --config FILE``); :meth:`stop` takes them all down.

    Each robot runs as ``imrobots run`` would run it (its class, agent, policy, options
    and stream policy), with its platform settings except those the emulator replaces
    (credentials, endpoints): their environment variables need not be set.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        names: list[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        manager: PluginManager | None = None,
        env: Mapping[str, str] | None = None,
        token: str | None = None,
        public_hosts: Sequence[str] = (),
    ) -> None:
        check_binding(host, token)
        self.token = token
        self.public_hosts = tuple(public_hosts)
        self.path = Path(path)
        self.names = names
        self.host = host
        self.port = port
        self.manager = manager or get_plugin_manager()
        self.env = env
        self.robots: list[DemoRobot] = []
        self.notes: list[str] = []
        """What was done with the robots' own settings, one line per setting
        (:func:`replaced_settings_notes`): those the emulators replaced, whether or not
        their environment variables are set, and those not used or used as written."""
        self.warnings: list[str] = []
        self.console: Console | None = None

    async def start(self) -> str:
        """Check the config, start everything; return the console's URL.

        :raises ConfigProblems: the config has errors (every one of them)."""
        result = check_config(self.path, env=self.env, manager=self.manager, emulated=True)
        if not result.ok:
            raise ConfigProblems(result.errors)
        self.warnings = list(result.warnings)
        prepared = {item.config.name: item for item in result.robots}
        names = list(dict.fromkeys(self.names)) if self.names else list(prepared)  # once each
        unknown = [n for n in names if n not in prepared]
        if unknown:
            raise ConfigProblems(
                [
                    f"{self.path}: no robot named {', '.join(map(repr, unknown))}; "
                    f"the file defines: {', '.join(prepared)}"
                ]
            )
        self.notes = []
        titles: dict[str, str] = {}
        try:
            for name in names:
                await self._start_robot(prepared[name], titles, result.unset)
        except BaseException:
            await self.stop()
            raise
        self.console = Console(
            {r.runtime.name: r.emulator for r in self.robots},
            {r.runtime.name: r.runtime for r in self.robots},
            host=self.host,
            port=self.port,
            titles=titles,
            token=self.token,
            public_hosts=self.public_hosts,
        )
        await self.console.start()
        return self.console.url

    async def _start_robot(
        self, item: Any, titles: dict[str, str], unset: Sequence[str] = ()
    ) -> None:
        config = item.config
        platform_name = config.platform
        where = f"robots.{config.name}.settings"
        emulator: EmulatorAdapter
        if platform_name == "memory":
            emulator = MemoryEmulator(
                structure(dict(config.settings), MemorySettings, path=where, source=str(self.path))
            )
        else:
            emulator = make_emulator(
                platform_name,
                self.manager,
                **self._emulator_options(platform_name, config.settings),
            )
        await emulator.start()
        try:
            platform = emulator.create_platform()
            own_platform = platform is not None
            if platform is None:
                platform = _settings_platform(
                    platform_name,
                    emulator,
                    self.manager,
                    config.settings,
                    path=where,
                    source=str(self.path),
                )
            memory = platform_name == "memory"  # its emulator is made from the settings
            self.notes += replaced_settings_notes(
                where,
                config.settings,
                {} if memory else emulator.robot_settings(),
                [path for path in unset if path.startswith(where + ".")],
                own_platform=own_platform and not memory,
            )
            runtime = RobotRuntime(
                name=config.name,
                robot=item.robot_class(agent=item.agent),
                platform=platform,
                store=ConsoleStore(),
                options=config.options,
                policy=config.policy,
                feedback_secret=config.feedback_secret.get() if config.feedback_secret else None,
                hooks=self.manager.hook,
                app_id=config.app_id,
            )
            await runtime.start()
        except BaseException:
            await emulator.stop()
            raise
        self.robots.append(
            DemoRobot(
                platform=platform_name,
                emulator=emulator,
                runtime=runtime,
                agent=str(config.agent.get("use", "none")),
            )
        )
        titles[config.name] = f"{config.name} · {emulator.title or platform_name}"

    def _emulator_options(self, name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The robot's settings that its emulator's factory takes by name (a card mode,
        say), so that the emulator behaves as the robot expects; never credentials, nor
        values whose environment variable is not set."""
        factories = self.manager.emulators()
        if name not in factories:
            return {}
        factory = resolve_object(factories[name])
        options = {}
        for key, value in settings.items():
            secret = any(word in key for word in ("secret", "password", "token"))
            unset = isinstance(value, str) and PLACEHOLDER.search(value) is not None
            if key != "port" and not secret and not unset and _takes(factory, key):
                options[key] = value
        return options

    async def stop(self) -> None:
        if self.console is not None:
            await self.console.stop()
            self.console = None
        for robot in self.robots:
            await robot.runtime.stop(timeout=5)
            await robot.emulator.stop()
        self.robots.clear()
