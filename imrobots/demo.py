"""``imrobots demo``: every installed platform's emulator, the support robot on each, and
the web console, all on 127.0.0.1 with no account."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

import attrs

from .config import structure
from .console import Console
from .emulation import EmulatorAdapter, MemoryEmulator
from .examples import SupportRobot
from .platform import Platform, resolve_object
from .plugins import PluginManager, get_plugin_manager
from .runtime import RobotRuntime, RuntimeOptions
from .store import MemoryStore

__all__ = ["Demo", "demo_agent", "emulator_takes", "make_emulator", "platform_for"]

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
        raise ValueError(f"no emulator for platform {name!r}; emulators: {known}")
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


def platform_for(name: str, emulator: EmulatorAdapter, manager: PluginManager) -> Platform:
    """A platform connection for a robot on ``emulator``, built from its robot settings."""
    platform = emulator.create_platform()
    if platform is not None:
        return platform
    spec = manager.platform_spec(name)
    settings: object = None
    if spec.settings is not None:
        settings = structure(
            emulator.robot_settings(),
            resolve_object(spec.settings),
            path=f"{name} emulator settings",
            source="demo",
        )
    return manager.create_platform(name, settings)


@attrs.define
class DemoRobot:
    platform: str
    emulator: EmulatorAdapter
    runtime: RobotRuntime


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
    ) -> None:
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
                raise ValueError(
                    f"no emulator for {', '.join(unknown)}; emulators: {', '.join(names)}"
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
                store=MemoryStore(),
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
        )
        await self.console.start()
        return self.console.url

    async def stop(self) -> None:
        if self.console is not None:
            await self.console.stop()
        for robot in self.robots:
            await robot.runtime.stop(timeout=5)
            await robot.emulator.stop()
