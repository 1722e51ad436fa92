"""`imrobots new robot` and `imrobots new platform`: each scaffold installs in a fresh
virtual environment and passes its own tests there; the platform plugin is then listed
by `imrobots platforms` (as planned)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from imrobots.cli import cli
from imrobots.plugins import PluginManager
from imrobots.scaffold import ScaffoldError, names_for, scaffold


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "IMROBOTS_", "VIRTUAL_ENV"))
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment that sees this one's packages (imrobots, pytest...)
    but installs into itself: what a scaffold installs never reaches the environment of
    the test suite. (Not ``--system-site-packages``: when the suite itself runs in a
    virtual environment, as in CI, that would show the base interpreter's packages.)"""
    path = tmp_path_factory.mktemp("venv") / "env"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=path.parent)
    assert made.returncode == 0, made.stderr
    python = path / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=path.parent,
    )
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    lines = "; ".join(f"site.addsitedir({p!r})" for p in ours if Path(p).is_dir())
    # a .pth line starting with "import" runs: the directories' own .pth files (editable
    # installs) are processed too
    Path(purelib.stdout.strip(), "_suite_packages.pth").write_text(
        f"import site; {lines}\n", encoding="utf-8"
    )
    yield python


def _install(python: Path, project: Path) -> None:
    installed = _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", "."], project)
    assert installed.returncode == 0, installed.stdout + installed.stderr


def test_a_robot_scaffold_installs_and_passes_its_own_tests(venv: Path, tmp_path: Path) -> None:
    project = tmp_path / "helpdesk"
    result = CliRunner().invoke(cli, ["new", "robot", "helpdesk", "-d", str(project)])
    assert result.exit_code == 0, result.output
    for name in ("pyproject.toml", "robots.toml", "helpdesk/robot.py", "tests/test_robot.py"):
        assert (project / name).is_file(), name
    _install(venv, project)
    tests = _run([str(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout, tests.stdout
    checked = _run([str(venv), "-m", "imrobots", "check", "robots.toml"], project)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "robot 'helpdesk' (HelpdeskRobot) on memory" in checked.stdout


def test_a_platform_scaffold_installs_passes_conformance_and_is_listed(
    venv: Path, tmp_path: Path
) -> None:
    project = tmp_path / "imrobots-acme"
    result = CliRunner().invoke(cli, ["new", "platform", "acme", "-d", str(project)])
    assert result.exit_code == 0, result.output
    for name in (
        "imrobots_acme/plugin.py",
        "imrobots_acme/platform.py",
        "imrobots_acme/convert.py",
        "imrobots_acme/cards.py",
        "imrobots_acme/console.py",
        "imrobots_acme/emulator/server.py",
        "tests/test_conformance.py",
    ):
        assert (project / name).is_file(), name
    _install(venv, project)
    tests = _run([str(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"], project)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    # the conformance suite ran: its checks passed, and it skipped only what the skeleton
    # declares it lacks (attachments, images, files, a stream lifetime)
    assert (
        "TestAcmeConformance"
        in _run(
            [str(venv), "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider"], project
        ).stdout
    )
    assert " failed" not in tests.stdout and "passed" in tests.stdout, tests.stdout
    assert tests.stdout.count("SKIPPED") == 4, tests.stdout
    listed = _run([str(venv), "-m", "imrobots", "platforms"], project)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("acme ")]
    assert "planned: not implemented in this version" in row
    # the suite's environment is untouched: acme is not installed here
    assert "acme" not in _run([sys.executable, "-m", "imrobots", "platforms"], tmp_path).stdout


def test_names_and_directories_are_checked(tmp_path: Path, manager: PluginManager) -> None:
    assert names_for("robot", "sales-assistant") == ("sales_assistant", "SalesAssistantRobot")
    assert names_for("robot", "help-robot") == ("help_robot", "HelpRobot")
    assert names_for("platform", "my_chat") == ("imrobots_my_chat", "MyChat")
    with pytest.raises(ScaffoldError, match="lowercase"):
        names_for("robot", "Bad Name")
    with pytest.raises(ScaffoldError, match="lowercase"):
        names_for("platform", "my-chat")  # a platform name is also a module name
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ScaffoldError, match="not an empty directory"):
        scaffold("robot", "taken", tmp_path / "taken")
    result = CliRunner().invoke(cli, ["new", "platform", "memory", "-d", str(tmp_path / "m")])
    assert result.exit_code == 2 and "already registered" in result.output


@pytest.mark.parametrize(
    ("name", "clash"),
    [
        ("class", "is a Python keyword"),
        ("asyncio", "is a module of Python's standard library"),
        ("json", "is a module of Python's standard library"),
        ("imrobots", "is reserved for imrobots"),
        ("imrobots-extra", "is reserved for imrobots"),
        ("tests", "is the scaffold's own tests directory"),
    ],
)
def test_a_robot_name_whose_package_cannot_work_is_refused(
    tmp_path: Path, name: str, clash: str
) -> None:
    with pytest.raises(ScaffoldError, match=f"its Python package, .*, {clash}.*e\\.g\\. my-{name}"):
        names_for("robot", name)
    assert names_for("robot", f"my-{name}")[0] == f"my_{name.replace('-', '_')}"
    result = CliRunner().invoke(cli, ["new", "robot", name, "-d", str(tmp_path / name)])
    assert result.exit_code == 2 and clash in result.output
    assert not (tmp_path / name).exists()


def test_a_robot_name_already_registered_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["new", "robot", "support", "-d", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "a robot named 'support' is already registered" in result.output
    assert "imrobots.examples.SupportRobot" in result.output
    assert not (tmp_path / "s").exists()


TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
TUTORIAL_ENV = {
    "DINGTALK_CLIENT_ID": "dingtutorial",
    "DINGTALK_CLIENT_SECRET": "tutorial-secret",
    "OPENAI_MODEL": "tutorial-model",
    "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    "OPENAI_API_KEY": "sk-tutorial",
    "SUPPORT_DESK_FEEDBACK_SECRET": "0123456789abcdef",
}


def _tutorial_files() -> list[tuple[str, str]]:
    """The tutorial's code blocks that are whole files: ``(path, text)``, the path from the
    block's first line (``# support-desk/...``), in page order."""
    text = TUTORIAL.read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", text, flags=re.DOTALL):
        first, _, rest = block.partition("\n")
        match = re.fullmatch(r"# support-desk/(\S+)", first)
        if match:
            found.append((match.group(1), rest))
    return found


def test_the_tutorial_runs_as_written(venv: Path, tmp_path: Path) -> None:
    pytest.importorskip("dingtalk_stream")
    project = tmp_path / "support-desk"
    assert (
        CliRunner().invoke(cli, ["new", "robot", "support-desk", "-d", str(project)]).exit_code == 0
    )
    files = _tutorial_files()
    paths = [path for path, _ in files]
    assert paths == [
        "support_desk/robot.py",
        "robots.toml",
        "robots.toml",
        "tests/test_dingtalk.py",
    ], paths
    # what the tutorial shows of the scaffold is what the scaffold writes
    assert files[0][1] == (project / "support_desk" / "robot.py").read_text(encoding="utf-8")
    _install(venv, project)
    env_before = dict(os.environ)
    try:
        os.environ.update(TUTORIAL_ENV)
        for path, text in files[1:]:
            (project / path).write_text(text, encoding="utf-8")
            if path == "robots.toml":  # each version of the config checks clean
                checked = _run([str(venv), "-m", "imrobots", "check", "robots.toml"], project)
                assert checked.returncode == 0, checked.stdout + checked.stderr
        tests = _run([str(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "6 passed" in tests.stdout, tests.stdout
