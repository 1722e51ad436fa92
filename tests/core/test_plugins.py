"""Plugin discovery, resilient loading, allow-listing, strict mode and duplicate names."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import imrobots
from imrobots.errors import PlatformUnavailable, PluginError
from imrobots.plugins import PluginManager
from tests.core.wheels import build_wheel

GOOD_PLUGIN = textwrap.dedent(
    """
    import imrobots

    @imrobots.hookimpl
    def register_platforms(register):
        register(imrobots.PlatformSpec(
            name="echo",
            factory="imrobots.memory:MemoryPlatform",
            description="third-party test platform",
        ))

    @imrobots.hookimpl
    def register_robots(register):
        register("echo-robot", imrobots.Robot)
    """
)

BROKEN_PLUGIN = "raise ImportError('this plugin is broken on purpose')\n"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Really pip-install a good and a broken third-party plugin into a private site dir."""
    wheels = tmp_path_factory.mktemp("wheels")
    site = tmp_path_factory.mktemp("site")
    good = build_wheel(
        wheels,
        dist="imrobots-echo",
        version="1.2.3",
        modules={"imrobots_echo": GOOD_PLUGIN},
        entry_points="[imrobots]\necho = imrobots_echo\n",
    )
    broken = build_wheel(
        wheels,
        dist="imrobots-broken",
        version="0.0.1",
        modules={"imrobots_broken": BROKEN_PLUGIN},
        entry_points="[imrobots]\nbroken = imrobots_broken\n",
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(good),
            str(broken),
        ],
        check=True,
    )
    return site


def _run(site: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IMROBOTS_")}
    environment["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=False
    )


LIST_PLATFORMS = textwrap.dedent(
    """
    import json
    from imrobots.plugins import get_plugin_manager
    m = get_plugin_manager()
    print(json.dumps({
        "platforms": {n: s.available for n, s in m.platforms().items()},
        "robots": sorted(m.robots()),
        "plugins": [[p.name, p.distribution, p.version, p.error] for p in m.plugins],
    }))
    """
)


def test_installed_third_party_plugin_is_discovered_and_broken_one_reported(
    plugin_site: Path,
) -> None:
    result = _run(plugin_site, LIST_PLATFORMS)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["platforms"]["echo"] is True
    assert data["platforms"]["memory"] is True
    assert "echo-robot" in data["robots"]
    plugins = {name: (dist, version, error) for name, dist, version, error in data["plugins"]}
    assert plugins["echo"] == ("imrobots-echo", "1.2.3", None)
    dist, version, error = plugins["broken"]
    assert (dist, version) == ("imrobots-broken", "0.0.1")
    assert "broken on purpose" in error
    # the failure is logged with the plugin's name, version and error
    assert (
        "broken" in result.stderr
        and "0.0.1" in result.stderr
        and "broken on purpose" in result.stderr
    )


def test_cli_platforms_lists_third_party_platform(plugin_site: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imrobots", "platforms"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), *sys.path])},
    )
    assert result.returncode == 0, result.stderr
    assert "echo" in result.stdout and "third-party test platform" in result.stdout
    assert "failed to load" in result.stderr


def test_allow_list_loads_only_named_plugins(plugin_site: Path) -> None:
    result = _run(plugin_site, LIST_PLATFORMS, IMROBOTS_LOAD_PLUGINS="echo")
    data = json.loads(result.stdout)
    assert "echo" in data["platforms"]
    assert "dingtalk" not in data["platforms"]
    assert [p[0] for p in data["plugins"]] == ["echo"]
    empty = json.loads(_run(plugin_site, LIST_PLATFORMS, IMROBOTS_LOAD_PLUGINS="").stdout)
    assert sorted(empty["platforms"]) == ["memory"]


def test_strict_mode_raises_for_broken_plugin(plugin_site: Path) -> None:
    result = _run(plugin_site, LIST_PLATFORMS, IMROBOTS_STRICT_PLUGINS="1")
    assert result.returncode != 0
    assert "PluginError" in result.stderr and "broken on purpose" in result.stderr


class _Duplicate:
    __name__ = "duplicate-plugin"

    @imrobots.hookimpl
    def register_platforms(self, register):  # type: ignore[no-untyped-def]
        register(imrobots.PlatformSpec(name="memory", factory="imrobots.memory:MemoryPlatform"))


def test_duplicate_names_are_an_error_naming_both_sources(manager: PluginManager) -> None:
    manager.register(_Duplicate(), name="duplicate-plugin")
    with pytest.raises(PluginError) as info:
        manager.platforms()
    message = str(info.value)
    assert "'memory'" in message and "imrobots.builtin" in message and "duplicate-plugin" in message


class _NotARobot:
    """Not a subclass of imrobots.Robot: a robot run from it failed only when its config
    was prepared, far from the plugin that registered it."""


class _GoodRobot(imrobots.Robot):
    pass


class _RegistersANonRobot:
    @imrobots.hookimpl
    def register_robots(self, register):  # type: ignore[no-untyped-def]
        register("helper", _NotARobot)
        register("good", _GoodRobot)


def test_a_registered_robot_that_is_not_a_robot_class_is_left_out_with_a_warning(
    manager: PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    """As a plugin that fails to load: logged and left out, the other robots kept."""
    manager.register(_RegistersANonRobot(), name="odd-plugin")
    with caplog.at_level("WARNING", logger="imrobots.plugins"):
        robots = manager.robots()
    assert robots == {"support": robots["support"], "good": _GoodRobot}
    [warning] = [r.getMessage() for r in caplog.records if "helper" in r.getMessage()]
    assert "plugin 'odd-plugin' registered robot 'helper'" in warning
    assert "not a subclass of imrobots.Robot" in warning and "left out" in warning


def test_strict_mode_refuses_a_registered_robot_that_is_not_a_robot_class() -> None:
    strict = PluginManager(load_entry_points=False, strict=True)
    strict.register(_RegistersANonRobot(), name="odd-plugin")
    with pytest.raises(PluginError) as info:
        strict.robots()
    message = str(info.value)
    assert "plugin 'odd-plugin' registered robot 'helper'" in message
    assert "not a subclass of imrobots.Robot" in message


class _NeedsSdk:
    @imrobots.hookimpl
    def register_platforms(self, register):  # type: ignore[no-untyped-def]
        register(
            imrobots.PlatformSpec(
                name="nosdk",
                factory="imrobots.memory:MemoryPlatform",
                requires=("surely_not_an_installed_sdk",),
                install='pip install "imrobots[nosdk]"',
            )
        )


def test_missing_sdk_is_reported_with_install_command(manager: PluginManager) -> None:
    manager.register(_NeedsSdk(), name="needs-sdk")
    status = manager.platforms()["nosdk"]
    assert not status.available and status.missing == ("surely_not_an_installed_sdk",)
    with pytest.raises(PlatformUnavailable, match=r'pip install "imrobots\[nosdk\]"'):
        manager.platform_spec("nosdk")


def test_unknown_platform_names_the_choices(manager: PluginManager) -> None:
    with pytest.raises(PluginError, match="unknown platform 'nope'; choose one of: memory"):
        manager.platform_spec("nope")


class _Aliased:
    """Two platforms, one declaring aliases, the other one alias that is the first's name."""

    @imrobots.hookimpl
    def register_platforms(self, register):  # type: ignore[no-untyped-def]
        register(
            imrobots.PlatformSpec(
                name="chatapp",
                factory="imrobots.memory:MemoryPlatform",
                aliases=("Chat-Brand", "chatty"),
            )
        )
        register(
            imrobots.PlatformSpec(
                name="otherapp", factory="imrobots.memory:MemoryPlatform", aliases=("chatapp",)
            )
        )


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("chatbrand", "chatapp"),  # an alias, ignoring case and punctuation
        ("CHAT_BRAND", "chatapp"),
        ("chattie", "chatapp"),  # close to an alias
        ("ChatApp", "chatapp"),  # the name itself, in other case
        ("otherap", "otherapp"),  # close to a name
        ("memroy", "memory"),
    ],
)
def test_unknown_platform_suggests_the_name_or_alias_meant(
    manager: PluginManager, written: str, meant: str
) -> None:
    manager.register(_Aliased(), name="aliased")
    assert manager.closest_platform(written) == meant
    with pytest.raises(PluginError) as raised:
        manager.platform_spec(written)
    assert str(raised.value) == (
        f"unknown platform {written!r} (did you mean {meant}?); "
        "choose one of: chatapp, memory, otherapp"
    )


def test_an_alias_is_only_a_hint(manager: PluginManager) -> None:
    """An alias is never taken for the platform, and one naming another platform (here
    otherapp's alias "chatapp") loses to that platform's name."""
    manager.register(_Aliased(), name="aliased")
    assert manager.closest_platform("telegram") is None
    with pytest.raises(PluginError, match=r"^unknown platform 'telegram'; choose one of"):
        manager.platform_spec("telegram")
    with pytest.raises(PluginError, match=r"\(did you mean chatapp\?\)"):
        manager.platform_spec("chatty")
    assert manager.platform_spec("chatapp").name == "chatapp"


class _Typo:
    @imrobots.hookimpl
    def register_platfroms(self, register):  # type: ignore[no-untyped-def]
        pass


def test_hookimpl_with_a_typo_is_caught(manager: PluginManager) -> None:
    import pluggy

    manager.register(_Typo(), name="typo")
    with pytest.raises(pluggy.PluginValidationError):
        manager.pm.check_pending()


class _Planned:
    @imrobots.hookimpl
    def register_platforms(self, register):  # type: ignore[no-untyped-def]
        register(
            imrobots.PlatformSpec(
                name="later",
                factory="imrobots.memory:MemoryPlatform",
                status="planned",
            )
        )


def test_planned_platform_is_listed_but_refused(manager: PluginManager) -> None:
    manager.register(_Planned(), name="planned")
    status = manager.platforms()["later"]
    assert status.planned and not status.available and status.missing == ()
    message = "platform 'later' is planned, not available in this version (see imrobots platforms)"
    with pytest.raises(PluginError, match=re.escape(message)):
        manager.platform_spec("later")
    with pytest.raises(PluginError, match="is planned"):
        manager.create_platform("later", None)


def test_feishu_and_wecom_register_as_available_with_their_requirements(
    manager: PluginManager,
) -> None:
    import imrobots_feishu.plugin
    import imrobots_wecom.plugin

    manager.register(imrobots_feishu.plugin, name="feishu")
    manager.register(imrobots_wecom.plugin, name="wecom")
    for name, requires in (
        ("feishu", ("lark_oapi", "httpx")),
        ("wecom", ("cryptography", "wechatpy")),
    ):
        status = manager.platforms()[name]
        assert not status.planned and status.spec.requires == requires
        assert status.spec.install == f'pip install "imrobots[{name}]"'
        installed = all(importlib.util.find_spec(m) for m in requires)
        assert status.available is installed
        assert name in manager.emulators()
