"""The ``imrobots`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .environment import environment_problems
from .errors import ImrobotsError
from .loop import fallback_warning, loop_name, new_event_loop
from .loop import run as run_on_loop
from .secret import RedactingFilter, redact_text

log = logging.getLogger("imrobots.cli")

T = TypeVar("T")


_output = {"format": "text"}
"""How ``imrobots`` prints what it says itself (``--log-format``): ``text`` lines on
standard error, or (``json``) log records, so that every line is JSON."""


def _json_output() -> bool:
    return _output["format"] == "json"


def _say(text: str, *, level: int = logging.INFO) -> None:
    """One line of the CLI's own (start, stop, warnings): a log record under
    ``--log-format json``, a plain line on standard error otherwise."""
    if _json_output():
        log.log(level, "%s", text)
    else:
        click.echo(text, err=True)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        error = record.exc_text  # when set: the traceback as the RedactingFilter left it
        if not error and record.exc_info:
            error = self.formatException(record.exc_info)
        if error:
            entry["error"] = error
        return json.dumps(entry, ensure_ascii=False)


_CHATTY_LOGGERS = ("httpx", "httpcore")
"""Third-party loggers that log each request at INFO; quiet below ``--log-level debug``."""


def _setup_logging(level: str, fmt: str) -> None:
    _output["format"] = fmt
    handler = logging.StreamHandler(sys.stderr)
    # Secrets in URLs (tokens in webhook URLs, passwords in proxy URLs) never reach a log line.
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # HTTP client libraries that log every request at INFO (httpx: a line per API call,
    # so per card update) speak from WARNING up, unless --log-level debug.
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.captureWarnings(True)  # Python warnings become log records (JSON too)
    if fmt == "json":
        sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("imrobots").critical("uncaught error", exc_info=(kind, exc, tb))


INTERRUPTED = 130
"""Exit status of a command Ctrl-C (SIGINT) stopped before it could stop cleanly: 128 + 2,
as shells report a process SIGINT ended."""


class _Cli(click.Group):
    """The ``imrobots`` group: under ``--log-format json``, a usage error of a command (a
    bad option value, a missing argument) is a JSON log line too, not click's plain text.
    An :class:`ImrobotsError` no command caught (an on/off ``IMROBOTS_*`` variable with
    a value none of them takes, read wherever it is first needed) is an ``error:`` line
    and exit status 2, as the commands' own errors are, not a traceback. Ctrl-C before a
    command's event loop handles it (while robot modules, agents and plugins are
    imported, say) exits with status 130 and one ``interrupted`` line, not a traceback
    or click's ``Aborted!``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if not _json_output():
                raise
            log.error("error: %s", exc.format_message())
            raise SystemExit(exc.exit_code) from None
        except ImrobotsError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            _say("interrupted", level=logging.WARNING)
            raise SystemExit(INTERRUPTED) from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imrobots")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="How much to log.",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="Log lines as text, or as JSON for production log collectors.",
)
def cli(log_level: str, log_format: str) -> None:
    """Put AI agents and other Python code into enterprise chat."""
    _setup_logging(log_level, log_format)
    # "package.module:Class" in a config refers to code next to it, as with uvicorn or gunicorn.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _fail(exc: BaseException) -> None:
    """Print every line of ``exc`` as an ``error:`` line and exit with status 2."""
    lines = getattr(exc, "problems", None) or str(exc).splitlines() or [type(exc).__name__]
    for line in lines:
        _say(f"error: {redact_text(str(line))}", level=logging.ERROR)
    raise SystemExit(2)


def _cannot_write(path: Path, exc: OSError) -> ImrobotsError:
    """The error of an output file that cannot be written (a missing directory, no
    permission): one line naming the file."""
    return ImrobotsError(f"cannot write {path}: {exc.strerror or exc}")


_PORT = click.IntRange(0, 65535)
"""A TCP port option's type: 0 (any free port) to 65535 (a larger one wrapped around
to another port, 70000 to 4464, when given to the socket as it was)."""


def _report(errors: Sequence[str], warnings: Sequence[str], source: object) -> None:
    """Print warnings, then errors (exit 2 if there are any), each on its own line."""
    for line in warnings:
        _say(f"warning: {redact_text(line)}", level=logging.WARNING)
    if not errors:
        return
    for line in errors:
        _say(f"error: {redact_text(line)}", level=logging.ERROR)
    if len(errors) > 1:
        _say(f"{source}: {len(errors)} errors", level=logging.ERROR)
    raise SystemExit(2)


@cli.command()
def platforms() -> None:
    """List the platforms, whether they can be used here, and how to install the missing ones.

    Each row is the platform's name, then ``available``, ``not installed: <pip command>``,
    or ``planned: not implemented in this version``, then its description.
    """
    from .plugins import get_plugin_manager

    manager = get_plugin_manager()
    rows = manager.platforms()
    width = max((len(n) for n in rows), default=8)
    for name, status in rows.items():
        if status.planned:
            state = "planned: not implemented in this version"
        elif status.available:
            state = "available"
        else:
            state = (
                f"not installed: {status.spec.install or 'missing ' + ', '.join(status.missing)}"
            )
        description = f"  {status.spec.description}" if status.spec.description else ""
        click.echo(f"{name:<{width}}  {state}{description}")
    for plugin in manager.plugins:
        if plugin.error:
            click.echo(
                f"plugin {plugin.name} ({plugin.distribution} {plugin.version}) failed to load: "
                f"{plugin.error}",
                err=True,
            )


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check(file: Path) -> None:
    """Validate a config FILE without connecting to anything.

    Reports every error of the file in one run, one line each, naming the file and the
    field as written there: unknown keys (with the closest known key), wrong types, values
    out of range, missing environment variables, platforms that are not installed or only
    planned, robot classes and agents that do not import, and robots that answer with an
    agent but have none.
    """
    from .config import check_config

    result = check_config(file)
    errors, warnings = list(result.errors), list(result.warnings)
    # the environment `run` reads besides the file's placeholders: the on/off flags and
    # IMROBOTS_LOOP (an unknown value, or uvloop asked for and missing)
    problems = environment_problems()
    errors += problems
    try:
        note = fallback_warning()
    except ImrobotsError as exc:
        if str(exc) not in problems:  # (an unknown IMROBOTS_LOOP is one of them)
            errors.append(str(exc))
    else:
        warnings += [note] if note else []
    _report(errors, warnings, file)
    for item in result.robots:
        agent = item.config.agent.get("use", "none")
        click.echo(
            f"ok: robot {item.config.name!r} ({item.robot_class.__name__}) on "
            f"{item.config.platform}, agent {agent}"
        )
    count = len(result.robots)
    click.echo(f"{file}: {count} robot{'s' if count != 1 else ''} valid")


@cli.group("config")
def config_group() -> None:
    """Work with config files."""


@config_group.command("schema")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the schema to this file instead of standard output.",
)
def config_schema_command(output: Path | None) -> None:
    """Print the JSON Schema of config files, with the settings of every available platform.

    Save it next to your robots.toml and point your editor at it (taplo / Even Better TOML:
    a first line ``#:schema ./robots.schema.json``).
    """
    from .schema import config_schema

    text = json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            _fail(_cannot_write(output, exc))
        click.echo(f"wrote {output}", err=True)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (Ctrl-C, or a process manager stopping us)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


DEFAULT_GRACE = 10.0
"""Seconds ``imrobots run`` takes to stop after SIGTERM or Ctrl-C (``--grace``)."""


def _check_environment(main: Coroutine[Any, Any, Any]) -> None:
    """Before a command runs robots: every ``IMROBOTS_*`` variable holding a value no
    command takes (:func:`imrobots.environment.environment_problems`) is an error, one
    line each, before anything starts (``main`` is closed, never run)."""
    problems = environment_problems()
    if problems:
        main.close()
        raise ImrobotsError("\n".join(problems))


def _on_loop(main: Coroutine[Any, Any, T]) -> T:
    """:func:`imrobots.loop.run` after :func:`_check_environment`."""
    _check_environment(main)
    return run_on_loop(main)


def _run_to_exit(main: Coroutine[Any, Any, None], grace: float = DEFAULT_GRACE) -> None:
    """Run ``main`` like :func:`asyncio.run`, but never wait for threads user code left
    blocked (``asyncio.to_thread`` in a handler, say): ``asyncio.run`` waits for the
    loop's default executor without a limit. What still runs after ``main`` returned is
    given a moment (at most a second, and 15 % of ``grace`` for tasks, as much for
    threads), then the process exits (status 0) without it."""
    moment = min(1.0, 0.15 * grace)
    _check_environment(main)
    try:
        loop = new_event_loop()  # uvloop where installed (imrobots.loop)
    except ImrobotsError:
        main.close()
        raise
    try:
        loop.run_until_complete(main)
        leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=moment))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()  # shuts the default executor down without waiting
    deadline = time.monotonic() + moment
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if lingering:
        log.warning(
            "exiting while %d thread(s) still run user code: %s",
            len(lingering),
            ", ".join(lingering),
        )
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)


async def _serve(
    runtimes: Sequence[Any],
    *,
    status: bool,
    grace: float = DEFAULT_GRACE,
    health: tuple[str, int] | None = None,
) -> None:
    stop = _stop_on_signals()
    started: list[Any] = []
    server = None
    try:
        if health is not None:
            from .health import HealthServer

            server = HealthServer(runtimes, host=health[0], port=health[1])
            try:
                url = await server.start()
            except OSError as exc:
                raise ImrobotsError(
                    f"cannot serve health and metrics on {health[0]}:{health[1]}: {exc}"
                ) from None
            _say(f"health: {url}/healthz, metrics: {url}/metrics")
        for runtime in runtimes:
            up = await _start_unless_stopped(runtime, stop)
            started.append(runtime)  # also when stopped while starting: stop() closes it
            if not up:
                break
            _say(f"robot {runtime.name}: connected to {runtime.describe()}")
        else:
            note = fallback_warning()
            if note is not None:
                _say(f"warning: {note}", level=logging.WARNING)
            _say(f"running on the {loop_name()} event loop; press Ctrl-C to stop")
        tty = sys.stderr.isatty() and status and not _json_output()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0 if tty else 60.0):
                    await stop.wait()
            line = "  ".join(
                f"{r.name}: {r.stats.received} in, {r.stats.answered} answered, "
                f"{r.stats.rejected} rejected, "
                f"{r.platform.connection_status.rejections} inbound rejected, "
                f"{r.stats.feedback} feedback"
                for r in started
            )
            if tty:
                click.echo(f"\r{line}", nl=False, err=True)
            elif not stop.is_set():
                log.info("status: %s", line)
    finally:
        if sys.stderr.isatty() and not _json_output():
            click.echo("", err=True)
        _say("stopping...")
        clean = await _stop_all(started, grace)
        if server is not None:
            await server.stop()
        for store in {id(r.store): r.store for r in runtimes}.values():
            try:
                await store.close()
            except Exception as exc:
                log.warning("closing the store failed: %s", redact_text(str(exc)))
        _say("stopped")
        if not clean:
            # Tasks of user code that swallow cancellation would keep asyncio.run waiting.
            logging.shutdown()
            os._exit(0)


async def _start_unless_stopped(runtime: Any, stop: asyncio.Event) -> bool:
    """Start ``runtime``, unless ``stop`` is set first (SIGTERM while its platform is still
    unreachable: the start would otherwise wait for its whole connect timeout, beyond the
    grace period). Returns whether it started; raises what its start raised."""
    starting = asyncio.ensure_future(runtime.start())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if starting.done():
        starting.result()
        return True
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping anyway
        await starting
    return False


async def _stop_all(runtimes: Sequence[Any], grace: float) -> bool:
    """Stop the robots together within ``grace`` seconds: their answers end interrupted;
    what is still running after that (user code that ignores cancellation) is left behind,
    and the process exits anyway (agent threads are daemon threads). Returns whether
    everything stopped in time."""
    if not runtimes:
        return True
    # Of the grace period: 60 % for answers to close their cards, 10 % more for
    # disconnecting; the rest is for what user code left running (_run_to_exit).
    stopping = [asyncio.ensure_future(r.stop(timeout=grace * 0.6)) for r in runtimes]
    done, pending = await asyncio.wait(stopping, timeout=grace * 0.7)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping a robot failed", exc_info=task.exception())
    if pending:
        log.warning(
            "%d robot(s) did not finish stopping within the %.0fs grace period; exiting anyway",
            len(pending),
            grace,
        )
        for task in pending:
            task.cancel()
        return False
    return True


@cli.command()
@click.argument("names", nargs=-1)
@click.option(
    "--config",
    "-c",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The robots' config file (TOML, or the seed's config.json).",
)
@click.option("--no-status", is_flag=True, help="Do not print the live status line.")
@click.option(
    "--grace",
    default=DEFAULT_GRACE,
    show_default=True,
    type=click.FloatRange(min=0.1),
    callback=lambda _ctx, _param, value: _seconds_or_more(value),
    help="Seconds to stop in after SIGTERM or Ctrl-C; running answers end interrupted.",
)
@click.option(
    "--health-port",
    type=_PORT,
    default=None,
    help="Serve /healthz and /metrics on this port (0: any free port).",
)
@click.option(
    "--health-host",
    default="127.0.0.1",
    show_default=True,
    help="Address of --health-port.",
)
def run(
    names: tuple[str, ...],
    config_path: Path,
    no_status: bool,
    grace: float,
    health_port: int | None,
    health_host: str,
) -> None:
    """Run the robots NAMES (default: all) of a config file until Ctrl-C or SIGTERM.

    On SIGTERM or Ctrl-C the robots stop taking messages, running answers end in an
    interrupted card, and the process exits with status 0 within --grace seconds, whatever
    the robots' code is doing.
    """
    from .app import build_runtimes
    from .config import check_config

    result = check_config(config_path)
    _report(result.errors, result.warnings, config_path)
    assert result.config is not None
    health = None if health_port is None else (health_host, health_port)
    if health is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            _fail(
                ImrobotsError(
                    "--health-port serves /metrics with prometheus-client, which is not "
                    'installed: pip install "imrobots[metrics]"'
                )
            )
    try:
        runtimes = build_runtimes(result.config, list(names) or None)
        _run_to_exit(
            _serve(runtimes, status=not no_status, grace=grace, health=health), grace=grace
        )
    except ImrobotsError as exc:
        _fail(exc)


async def _demo_conversation(
    questions: Sequence[str],
    delay: float,
    stop: asyncio.Event | None = None,
    signalled: Sequence[int] = (),
) -> bool:
    """Ask ``questions`` in the terminal; returns whether they were all answered (False:
    SIGINT or SIGTERM, or ``stop``, stopped the demo first, as Ctrl-C stops the console's).

    The robot is stopped (its summary logged) whatever happens, then what the conversation
    raised is raised. Standard output closed under it (``| head``): the demo stops, and
    :class:`BrokenPipeError` is raised once the robot has stopped. ``signalled``: the
    signals received before the loop ran (a stop from the start)."""
    stop = stop or _stop_on_signals()  # first of all: Ctrl-C from here on is a clean stop
    if signalled:
        stop.set()
    from .cards import Card
    from .demo_agent import DemoAgent
    from .examples import SupportRobot
    from .memory import MemoryPlatform, MemorySettings
    from .models import FeedbackRating
    from .runtime import RobotRuntime

    platform = MemoryPlatform(MemorySettings(update_interval=0.3))
    printed: dict[str, int] = {}  # card id -> how many of its recorded states are printed
    texts: dict[str, str] = {}  # card id -> its text as last printed
    printed_texts = 0  # how many of platform.texts are printed
    broken: list[BrokenPipeError] = []  # standard output closed (| head)
    failed: list[Exception] = []  # the display's own failure, reported once
    width = max(60, shutil.get_terminal_size((100, 24)).columns)

    def out(line: str = "") -> None:
        """One line on standard output; once it is closed, nothing more, and the demo stops.
        Control characters (a question's or an answer's escape sequences, which would
        recolour the terminal or retitle its window) are printed as U+FFFD."""
        if broken:
            return
        try:
            click.echo(line.translate(_CONTROLS))
        except BrokenPipeError as exc:
            broken.append(exc)
            stop.set()

    def echo_text(text: str) -> None:
        """The text whole, each of its lines wrapped to the terminal (never cut)."""
        for line in text.splitlines() or [""]:
            wrapped = textwrap.wrap(
                line, width=width - 4, break_long_words=False, break_on_hyphens=False
            )
            for part in wrapped or [""]:
                out(f"    {part}" if part else "")

    def out_indented(head: str, lines: Sequence[str]) -> None:
        """``head`` and the first of ``lines`` on one line, the others indented as card
        text is."""
        first, *further = lines
        out(f"{head}{first}".rstrip())
        for line in further:
            out(f"    {line}".rstrip())

    def show_state(card_id: str, state: Card | str) -> None:
        """One recorded state of a card: a streamed update as the text it adds, any other
        state whole."""
        status = str(state.status) if isinstance(state, Card) else "streaming"
        text = state.markdown if isinstance(state, Card) else state
        before = texts.get(card_id, "")
        texts[card_id] = text
        if status == "streaming" and before and text.startswith(before):
            # only what the update adds
            out_indented(f"  [{card_id} streaming] ...", text[len(before) :].split("\n"))
        else:
            out(f"  [{card_id} {status}]")
            echo_text(text)
        if isinstance(state, Card) and state.buttons:
            out("  " + " ".join(f"[{b.label}]" for b in state.buttons))

    def show(op: str, card: Any) -> None:
        """Print what the platform recorded since the last call: the text messages sent,
        and every state of ``card`` not printed yet. Never raises: the display must not
        break the platform's call it is told of."""
        nonlocal printed_texts
        try:
            for _conversation, text in platform.texts[printed_texts:]:
                printed_texts += 1
                out("  [text]")
                echo_text(text)
            if card is not None:
                seen = printed.get(card.id, 0)
                printed[card.id] = len(card.history)
                for _time, state in card.history[seen:]:
                    show_state(card.id, state)
        except Exception as exc:
            if not failed:
                failed.append(exc)
                log.warning("the terminal display failed: %s", exc, exc_info=True)

    def feedback_button(cards: Sequence[Any]) -> str | None:
        """The id of the last card among ``cards`` that has a "Very helpful" button."""
        for card in reversed(cards):
            current = card.current
            if isinstance(current, Card) and any(
                b.label == FeedbackRating.VERY_HELPFUL.label for b in current.buttons
            ):
                return str(card.id)
        return None

    async def converse() -> None:
        for question in questions:
            if stop.is_set():  # stopped before the loop ran: ask nothing
                return
            out_indented("\nAlice: @support ", question.splitlines() or [""])
            known = len(platform.cards)
            await platform.say(question)
            # no time limit: --delay may be long, and Ctrl-C is the user's to press
            await runtime.wait_idle()
            # a text reply (a message without text, say) has no card to press: printed only
            card_id = feedback_button(list(platform.cards.values())[known:])
            if card_id is None:
                continue
            await platform.press(card_id, FeedbackRating.VERY_HELPFUL)
            await runtime.wait_idle(timeout=10)
            stored = await runtime.store.list_feedback()
            out(f"  Alice pressed [Very helpful]; feedback stored: {stored[-1].rating.value}")

    platform.on_change(show)
    runtime = RobotRuntime(
        name="support", robot=SupportRobot(agent=DemoAgent(delay=delay)), platform=platform
    )
    talk: asyncio.Future[None] | None = None
    stopped = asyncio.ensure_future(stop.wait())
    answered = False
    try:
        await runtime.start()
        talk = asyncio.ensure_future(converse())
        await asyncio.wait({talk, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if talk.done():
            talk.result()  # raises what the conversation raised
        if stop.is_set():
            # the answer running ends in an interrupted card (printed, unless stdout is gone)
            _say("standard output closed; stopping..." if broken else "stopping...")
        answered = not stop.is_set()
    finally:
        stopped.cancel()
        if talk is not None:
            talk.cancel()
            # its outcome, if any, was raised above: the robot stops whatever it was
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await talk
        await runtime.stop()  # logs its summary
        if stop.is_set():
            _say("stopped")
    if broken:
        raise broken[0]
    return answered


_CONTROLS = {
    code: "\ufffd" for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if code not in (9, 10)
}
"""C0 and C1 control characters but the tab and the newline, for ``str.translate``."""


def _stdout_closed() -> None:
    """Standard output was closed under us (``| head``): point it at /dev/null, so that
    the interpreter's last flush of what is still buffered does not fail again (as
    Python's documentation of SIGPIPE advises; click does the like)."""
    with contextlib.suppress(OSError, ValueError):
        _devnull_onto(sys.stdout.fileno())


def _devnull_onto(fd: int) -> None:
    """Make file descriptor ``fd`` /dev/null (open or not before)."""
    null = os.open(os.devnull, os.O_RDWR)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


_TOKEN_HELP = (
    "The token browsers and clients must present (required with a --host beyond loopback; "
    "default: a new random one per start). Prefer the environment variable: a command "
    "line is visible to other users."
)


def _console_address_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--host`` and ``--port`` of a command that serves the console."""
    port_help = "Console port (0: any free port)."
    fn = click.option("--port", default=8300, show_default=True, type=_PORT, help=port_help)(fn)
    return click.option("--host", default="127.0.0.1", show_default=True, help="Console address.")(
        fn
    )


def _token_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--public-host",
        "public_hosts",
        multiple=True,
        help="A host name the console is reached by besides IP addresses and localhost "
        "(a reverse proxy's; repeatable).",
    )(fn)
    return click.option("--token", envvar="IMROBOTS_CONSOLE_TOKEN", default=None, help=_TOKEN_HELP)(
        fn
    )


def _check_binding(host: str, token: str | None) -> None:
    from .console.server import check_binding

    try:
        check_binding(host, token)
    except ValueError as exc:
        _fail(exc)


def _console_url(url: str, host: str) -> str:
    """The console's URL as printed. Beyond loopback a browser opens it once with
    ``?token=`` (the token the operator gave; not printed); on loopback the page itself
    hands its browser the token."""
    from .webguard import is_loopback

    return url if is_loopback(host) else f"{url}?token=<your token>"


async def _demo_console(
    host: str,
    port: int,
    platforms: list[str] | None,
    token: str | None = None,
    public_hosts: Sequence[str] = (),
) -> None:
    from .demo import Demo, demo_agent
    from .proxies import exempt_loopback

    exempt_loopback()  # the robots here talk to emulators on 127.0.0.1
    agent, agent_description = demo_agent()
    demo = Demo(
        host=host,
        port=port,
        platforms=platforms,
        agent=agent,
        token=token,
        public_hosts=public_hosts,
    )
    stop = _stop_on_signals()  # before "Press Ctrl-C" is printed: a press right after it counts
    try:
        url = await demo.start()
        for robot in demo.robots:
            where = robot.emulator.base_url or "in-process"
            click.echo(
                f"  {robot.platform}: emulator {where}, support robot "
                f"connected to {robot.runtime.describe()}"
            )
        for name, reason in demo.skipped.items():
            click.echo(f"  {name}: skipped ({reason})")
        click.echo(f"  agent: {agent_description}")
        click.echo(f"console: {_console_url(url, host)}")
        _say("Open the console, pick a chat and @-mention the robot. Press Ctrl-C to stop.")
        await stop.wait()
        _say("stopping...")
    finally:
        await demo.stop()
    _say("stopped")


@cli.command()
@click.option(
    "--question",
    "-q",
    "questions",
    multiple=True,
    help="Ask this in the terminal instead of starting the console (repeatable).",
)
@click.option(
    "--delay",
    default=0.03,
    show_default=True,
    callback=lambda _ctx, _param, value: _seconds_or_more(value),
    help="Seconds between streamed words (terminal): 0 or more.",
)
@_console_address_options
@click.option("--platform", "platforms", multiple=True, help="Only these platforms (repeatable).")
@_token_option
def demo(
    questions: tuple[str, ...],
    delay: float,
    host: str,
    port: int,
    platforms: tuple[str, ...],
    token: str | None,
    public_hosts: tuple[str, ...],
) -> None:
    """Try robots with no account: each installed platform's emulator, the support robot on
    each, and a web console to chat with them.

    With -q: the support robot on the in-memory platform answers each QUESTION in the
    terminal, each streamed update printed as the text it adds, every other card state
    (thinking, final, interrupted) and each text message whole; Ctrl-C stops it as it
    stops the console. The console's options (--host, --port, --platform, --token,
    --public-host) are refused with -q, --delay without it.
    """
    ctx = click.get_current_context()
    if questions:
        # the console's options mean nothing to -q: refused, never silently ignored (a token
        # in IMROBOTS_CONSOLE_TOKEN is the environment's, not this command line's)
        given = [
            f"--{name.replace('_', '-').removesuffix('s')}"
            for name in ("host", "port", "platforms", "token", "public_hosts")
            if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(
                f"{', '.join(given)}: the web console's option{'s' if len(given) > 1 else ''}; "
                "-q asks on the in-memory platform in the terminal, without the console: "
                "give one or the other"
            )
    elif ctx.get_parameter_source("delay") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(
            "--delay is the terminal demo's (-q); the console's demo agent streams at its "
            "own pace: give --delay with -q only"
        )
    if questions:
        _demo_in_the_terminal(list(questions), delay)
        return
    _check_binding(host, token)
    _say("imrobots demo: starting emulators, robots and the console (no account needed)")
    from .demo import import_emulators
    from .plugins import get_plugin_manager

    # Plugins and emulators (a platform SDK: seconds for some) are imported here, before
    # the event loop: Ctrl-C meanwhile ends the command at once (status 130), where inside
    # the loop it would wait for the imports, then start everything to stop it.
    try:
        import_emulators(get_plugin_manager(), list(platforms) or None)
        _on_loop(_demo_console(host, port, list(platforms) or None, token, public_hosts))
    except OSError as exc:
        _fail(ImrobotsError(f"cannot start the console on {host}:{port}: {exc}; try --port 0"))
    except (ValueError, ImrobotsError) as exc:
        _fail(exc)


def _seconds_or_more(value: float) -> float:
    """A click option's seconds: finite and 0 or more, else a usage error (click names
    the option)."""
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(f"give a finite number of seconds, 0 or more, not {value}")
    return value


def _demo_in_the_terminal(questions: list[str], delay: float) -> None:
    """``imrobots demo -q``: exit status 0 when answered or stopped by Ctrl-C or SIGTERM
    (also one pressed before the event loop runs), 1 when standard output was closed
    (click's status for a closed pipe) or the conversation failed (one ``error:`` line),
    2 for a bad value."""
    main = None
    # Until the loop's own handlers take over (_stop_on_signals), SIGINT and SIGTERM are
    # noted, not raised mid-statement (a KeyboardInterrupt inside the loop's construction
    # leaves a half-made loop and a coroutine never awaited): the demo then stops at once.
    signalled: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: signalled.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        click.echo(
            "imrobots demo: the support robot on the in-memory platform (no account, no network)"
        )
        started = time.monotonic()
        main = _demo_conversation(questions, delay, signalled=signalled)
        answered = _on_loop(main)
        if answered:
            click.echo(f"\ndone in {time.monotonic() - started:.1f}s")
    except KeyboardInterrupt:
        # Ctrl-C after the loop removed its handlers (the demo has stopped): a clean stop
        if main is not None:
            main.close()  # never started: no "coroutine was never awaited"
        _say("stopping...")
        _say("stopped")
    except BrokenPipeError:
        _stdout_closed()
        raise SystemExit(1) from None
    except ImrobotsError as exc:  # IMROBOTS_LOOP, say
        _fail(exc)
    except Exception as exc:
        log.debug("the terminal demo failed", exc_info=True)
        _say(f"error: the demo failed: {type(exc).__name__}: {exc}", level=logging.ERROR)
        raise SystemExit(1) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _toml_value(value: Any) -> str:
    """A TOML value for a setting (strings, numbers, booleans, lists and tables of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def emulator_config(platform: str, settings: dict[str, Any], *, robot: str = "support") -> str:
    """A complete config file for a robot on an emulator: the emulator's settings and the
    offline demo agent."""
    lines = [
        f"[robots.{robot}]",
        f'platform = "{platform}"',
        'robot = "support"                  # imrobots.examples.SupportRobot',
        "",
        f"[robots.{robot}.settings]           # the emulator's app and endpoints",
        *(f"{key} = {_toml_value(value)}" for key, value in settings.items()),
        "",
        f"[robots.{robot}.agent]",
        'use = "demo"                       # the offline FAQ agent; or "openai", or your own',
        "",
    ]
    return "\n".join(lines)


async def _emulate(
    platform: str,
    *,
    port: int,
    console_port: int,
    client_secret: str | None,
    output: Path | None,
    stop: asyncio.Event | None = None,
) -> None:
    from .console import Console
    from .demo import emulator_takes, make_emulator
    from .plugins import get_plugin_manager
    from .proxies import exempt_loopback

    exempt_loopback()  # the robots here talk to emulators on 127.0.0.1

    stop = stop or _stop_on_signals()  # before "Press Ctrl-C" is printed
    manager = get_plugin_manager()
    options: dict[str, Any] = {"port": port}
    if client_secret is not None:
        options["client_secret"] = client_secret
    emulator = make_emulator(platform, manager, **options)
    try:
        await emulator.start()
    except OSError as exc:
        raise ImrobotsError(
            f"cannot start the {platform} emulator on 127.0.0.1:{port}: {exc}; try --port 0"
        ) from None
    console = Console({platform: emulator}, {}, port=console_port)
    try:
        try:
            await console.start()
        except OSError as exc:
            raise ImrobotsError(
                f"cannot start the console on 127.0.0.1:{console_port}: {exc}; try --console-port 0"
            ) from None
        config = emulator_config(platform, emulator.robot_settings())
        api = console.url.rstrip("/")
        click.echo(f"{platform} emulator listening at {emulator.base_url}")
        click.echo(f"console: {console.url}  (chat as a user; see the robot's cards and calls)")
        if output is not None:
            try:
                await asyncio.to_thread(output.write_text, config, encoding="utf-8")
            except OSError as exc:
                raise _cannot_write(output, exc) from None
            click.echo(f"\n1. The config of a robot on this emulator is in {output}:\n")
        else:
            click.echo("\n1. Save this config as robots.toml (a robot on this emulator):\n")
        click.echo(config)
        target = output or "robots.toml"
        click.echo(f"2. In another terminal: imrobots run --config {target}\n")
        body = json.dumps(
            {"text": "How do I get a refund?", "conversation_id": "group-support", "mention": True}
        )
        click.echo("3. Talk to it: open the console, or send a message as a user:\n")
        click.echo(f"curl -s {api}/api/{platform}/messages -H 'content-type: application/json' \\")
        click.echo(f"  -H 'X-Imrobots-Token: {console.token}' -d '{body}'")
        click.echo(f"curl -s {api}/api/{platform}/state   # its cards, messages and API calls")
        control = emulator.control_token
        if control is not None:
            click.echo(
                f"\nPOSTs to the emulator's own control API ({emulator.base_url}/_emulator/, "
                "where its platform has one: faults, raw frames; see the platform's page) "
                f"need its token:\n  -H 'X-Imrobots-Token: {control}'"
            )
        environment = getattr(emulator, "environment", None)
        if callable(environment):
            click.echo("\nFor the platform's official SDK, these environment variables:\n")
            for key, value in environment().items():
                click.echo(f"export {key}={value}")
        if client_secret is None and emulator_takes(platform, manager, "client_secret"):
            click.echo(
                "\nThe secret and ports change on every start; --client-secret, --port and "
                "--console-port keep them."
            )
        click.echo("\nPress Ctrl-C to stop.")
        await stop.wait()
    finally:
        await console.stop()
        await emulator.stop()
    _say("stopped")


@cli.command()
@click.argument("platform")
@click.option(
    "--port", default=0, show_default=True, type=_PORT, help="Emulator port (0: any free port)."
)
@click.option(
    "--console-port",
    default=0,
    show_default=True,
    type=_PORT,
    help="Console port (0: any free port).",
)
@click.option(
    "--client-secret",
    default=None,
    help="The emulated app's secret, so that the printed config stays valid across restarts "
    "(default: a new random one).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the robot's config to this file.",
)
def emulate(
    platform: str, port: int, console_port: int, client_secret: str | None, output: Path | None
) -> None:
    """Run one PLATFORM's emulator on its own, with a console to talk to the robot.

    Prints a complete config of a robot on the emulator (with the offline demo agent): run
    it with ``imrobots run --config`` in another terminal, then chat with it in the console
    or with curl.
    """
    if platform == "memory":
        _fail(
            ImrobotsError(
                "the memory platform runs inside the robot's process; there is nothing to emulate"
            )
        )
    try:
        _on_loop(
            _emulate(
                platform,
                port=port,
                console_port=console_port,
                client_secret=client_secret,
                output=output,
            )
        )
    except (ValueError, ImrobotsError) as exc:
        _fail(exc)


async def _config_console(
    path: Path,
    names: list[str],
    host: str,
    port: int,
    stop: asyncio.Event | None = None,
    token: str | None = None,
    public_hosts: Sequence[str] = (),
) -> None:
    from .demo import ConfigConsole
    from .proxies import exempt_loopback

    exempt_loopback()  # the robots here talk to emulators on 127.0.0.1

    console = ConfigConsole(
        path,
        names=names or None,
        host=host,
        port=port,
        token=token,
        public_hosts=public_hosts,
    )
    stop = stop or _stop_on_signals()  # before "Press Ctrl-C" is printed
    try:
        url = await console.start()
        for line in console.warnings:
            _say(f"warning: {line}", level=logging.WARNING)
        for robot in console.robots:
            runtime = robot.runtime
            click.echo(
                f"  robot {runtime.name} ({type(runtime.robot).__name__}) on {robot.platform}: "
                f"emulator {robot.emulator.base_url or 'in-process'}, agent {robot.agent}"
            )
        for note in console.notes:
            click.echo(f"  note: {note}")
        click.echo(f"console: {_console_url(url, host)}")
        _say("Open the console, pick a robot and talk to it. Press Ctrl-C to stop.")
        await stop.wait()
        _say("stopping...")
    finally:
        await console.stop()
    _say("stopped")


@cli.command("console")
@click.argument("names", nargs=-1)
@click.option(
    "--config",
    "-c",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The robots' config file (TOML, or the seed's config.json).",
)
@_console_address_options
@_token_option
def console_command(
    names: tuple[str, ...],
    config_path: Path,
    host: str,
    port: int,
    token: str | None,
    public_hosts: tuple[str, ...],
) -> None:
    """Chat with the robots NAMES (default: all) of a config file in the web console.

    Each robot runs as `imrobots run` would run it (its class, agent, policy and options),
    connected to a local emulator of its platform instead of the real one: the emulator's
    credentials and endpoints replace the config's, so no account is needed.
    """
    _check_binding(host, token)
    _say(f"imrobots console: the robots of {config_path}, each on a local emulator")
    try:
        _on_loop(
            _config_console(
                config_path, list(names), host, port, token=token, public_hosts=public_hosts
            )
        )
    except OSError as exc:
        _fail(ImrobotsError(f"cannot start the console on {host}:{port}: {exc}; try --port 0"))
    except (ValueError, ImrobotsError) as exc:
        _fail(exc)


@cli.group()
def new() -> None:
    """Start a project: a robot application, or a platform plugin."""


def _written(made: Any, steps: Sequence[str]) -> None:
    click.echo(f"wrote {len(made.files)} files to {made.directory}:")
    for path in made.files:
        click.echo(f"  {path}")
    click.echo("\nNext:\n")
    click.echo(f"  cd {made.directory}")
    for step in steps:
        click.echo(f"  {step}")


def _directory_option(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--directory/-d`` of the ``new`` commands: where to write, ``default`` if not given."""
    return click.option(
        "--directory",
        "-d",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"Where to write it (default: {default}); it must not exist or be empty.",
    )


@new.command("robot")
@click.argument("name")
@_directory_option("./NAME")
def new_robot(name: str, directory: Path | None) -> None:
    """Write a robot application package NAME: a Robot subclass, an agent, the entry point
    that registers the robot as NAME, a robots.toml and tests written with imrobots.testing.
    """
    from .plugins import get_plugin_manager
    from .scaffold import ScaffoldError, scaffold

    registered = get_plugin_manager().robots()
    if name in registered:
        cls = registered[name]
        _fail(
            ScaffoldError(
                f"a robot named {name!r} is already registered ({cls.__module__}."
                f"{cls.__qualname__}): installing a second would make imrobots refuse both "
                "('registered twice'); choose another name"
            )
        )
    try:
        made = scaffold("robot", name, directory)
    except ScaffoldError as exc:
        _fail(exc)
        return
    _written(
        made,
        [
            'pip install -e ".[test]"',
            "python -m pytest",
            "imrobots console --config robots.toml    # chat with it in the browser",
        ],
    )


@new.command("platform")
@click.argument("name")
@_directory_option("./imrobots-NAME")
def new_platform(name: str, directory: Path | None) -> None:
    """Write a platform plugin NAME: the entry point, a Platform subclass with its
    capabilities, an event converter, a card renderer, an emulator with its
    EmulatorAdapter, and the platform conformance suite wired in.

    The plugin registers the platform as planned: its skeleton passes the conformance
    suite against its own emulator, whose protocol is made up until you make it the real
    platform's.
    """
    from .plugins import get_plugin_manager
    from .scaffold import ScaffoldError, scaffold

    registered = get_plugin_manager().platforms()
    if name in registered:
        _fail(
            ScaffoldError(
                f"a platform named {name!r} is already registered (by "
                f"{registered[name].source}); choose another name"
            )
        )
    try:
        made = scaffold("platform", name, directory)
    except ScaffoldError as exc:
        _fail(exc)
        return
    _written(
        made,
        [
            'pip install -e ".[test]"',
            "python -m pytest          # the conformance suite against the skeleton's emulator",
            f"imrobots platforms        # lists {name} (planned)",
        ],
    )


@cli.group()
def feedback() -> None:
    """Read the feedback users gave."""


@feedback.command("export")
@click.option(
    "--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option("--robot", default=None, help="Only this robot's feedback.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
def feedback_export(config_path: Path, fmt: str, robot: str | None, output: Path | None) -> None:
    """Export stored feedback as CSV or JSON (from the config's [store]; the robots'
    credentials need not be set)."""
    from .app import build_store
    from .config import Config, load_store_config
    from .exporting import write_feedback

    try:
        config = Config(robots={}, store=load_store_config(config_path), path=config_path)
    except ImrobotsError as exc:
        _fail(exc)
        return
    if config.store.backend == "memory":
        click.echo(
            f"warning: {config_path} keeps state in memory (no [store] table, or backend = "
            '"memory"): feedback lives only in the running robot\'s process, so there is '
            'nothing to export here. Add [store] with backend = "sqlite" (and a path) or '
            '"redis" to keep it.',
            err=True,
        )

    async def read() -> tuple[list[Any], list[str]]:
        store = build_store(config)
        try:
            items = await store.list_feedback(robot=robot)
            if robot is None or items:
                return items, []
            # nothing for this robot: a misspelt name must not pass for "no feedback"
            return items, sorted({f.robot for f in await store.list_feedback()})
        finally:
            await store.close()

    try:
        items, robots = _on_loop(read())
    except ImrobotsError as exc:  # IMROBOTS_LOOP, or a store that cannot be reached
        _fail(exc)
    if robot is not None and not items:
        click.echo(
            f"warning: the store holds no feedback of robot {robot!r}; "
            + (
                f"it holds feedback of: {', '.join(robots)}"
                if robots
                else "it holds no feedback at all"
            ),
            err=True,
        )
    if output is None:
        count = write_feedback(items, fmt, sys.stdout)  # type: ignore[arg-type]
    else:
        try:
            with output.open("w", encoding="utf-8", newline="") as handle:
                count = write_feedback(items, fmt, handle)  # type: ignore[arg-type]
        except OSError as exc:
            _fail(_cannot_write(output, exc))
    click.echo(f"exported {count} feedback record{'s' if count != 1 else ''}", err=True)


def _open_missing_standard_streams() -> None:
    """Open /dev/null on each of file descriptors 0-2 the process was started without
    (``imrobots run <&-``, ``>&-``): a socket would otherwise get one of them, and uvloop
    aborts the process (a C assertion) when it closes it. The interpreter, which set
    ``sys.stdin``/``stdout``/``stderr`` to ``None`` for them, gets a stream on each."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            _devnull_onto(fd)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, mode, encoding="utf-8", closefd=False))  # noqa: SIM115


def main() -> None:
    _open_missing_standard_streams()
    cli(prog_name="imrobots")
