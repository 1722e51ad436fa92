"""The core imports no plugin package and no platform SDK, ever."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import imrobots

FORBIDDEN = (
    "imrobots_dingtalk",
    "imrobots_feishu",
    "imrobots_wecom",
    "dingtalk_stream",
    "lark_oapi",
    "wechatpy",
    "wecom_aibot_sdk",
)


def test_importing_every_core_module_loads_no_plugin_or_sdk() -> None:
    # Modules of the core's optional extras (redis_store without the redis package) are
    # skipped where the extra is not installed: they are not platform SDKs.
    code = (
        "import importlib, json, pkgutil, sys, imrobots\n"
        "for m in pkgutil.walk_packages(imrobots.__path__, 'imrobots.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        try:\n"
        "            importlib.import_module(m.name)\n"
        "        except ModuleNotFoundError as exc:\n"
        "            if exc.name not in ('redis', 'openai'):\n"
        "                raise\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout)
    offending = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert offending == []


def test_no_core_source_file_imports_a_plugin_or_sdk() -> None:
    root = Path(imrobots.__file__).parent
    offending = []
    for info in pkgutil.walk_packages([str(root)]):
        path = root / (info.name.replace(".", "/") + ".py")
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offending += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offending == []


PUBLIC_SURFACES = {"imrobots", "imrobots.platform", "imrobots.emulation", "imrobots.testing"}
"""What plugins may import: robot authors' ``imrobots``, plugin authors' ``imrobots.platform``,
emulator authors' ``imrobots.emulation`` and the test kit ``imrobots.testing``."""


def test_plugins_use_only_the_public_api() -> None:
    """Plugin packages import only the public surfaces, never other core modules."""
    root = Path(imrobots.__file__).parent.parent
    offending = []
    for package in ("imrobots_dingtalk", "imrobots_feishu", "imrobots_wecom"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    if node.module.startswith("imrobots.") and node.module not in PUBLIC_SURFACES:
                        offending.append(f"{path.relative_to(root)}: from {node.module}")
                elif isinstance(node, ast.Import):
                    offending += [
                        f"{path.relative_to(root)}: import {a.name}"
                        for a in node.names
                        if a.name.startswith("imrobots.") and a.name not in PUBLIC_SURFACES
                    ]
    assert offending == []


def test_public_api_is_declared() -> None:
    for name in imrobots.__all__:
        assert hasattr(imrobots, name), name
