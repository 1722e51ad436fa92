"""Health and metrics: what each robot's connection is doing, and counters of its work.

Three parts:

* :class:`ConnectionStatus`: the public API a platform plugin reports its long
  connection through (``platform.connection_status``, see
  :attr:`Platform.connection_status <imrobots.platform.Platform.connection_status>`):
  ``connecting()``, ``connected()``, ``disconnected(reason)``, ``frame_received()``,
  and ``rejected()`` for each forged or malformed inbound request or frame.
  A plugin that reports nothing is taken as connected once its ``start()`` returned,
  until it is closed.
* call observation: every platform call the core makes goes through
  :func:`~imrobots.retry.retry_call`, which tells the running robot's
  :class:`CallObserver` about rate-limited answers, retries and failed attempts.
* :class:`HealthServer`: ``imrobots run --health-port N`` serves ``/healthz``
  (JSON, 200 when every robot is connected, else 503) and ``/metrics`` (Prometheus
  text format, through ``prometheus-client``: the ``metrics`` extra).

Nothing here imports ``prometheus_client`` until ``/metrics`` is set up.
"""

from __future__ import annotations

import bisect
import contextvars
import enum
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

    from .runtime import RobotRuntime

__all__ = [
    "LATENCY_BUCKETS",
    "CallObserver",
    "ConnectionState",
    "ConnectionStatus",
    "HealthServer",
    "Histogram",
    "call_observer",
    "observing_calls",
]

log = logging.getLogger("imrobots.health")


# --- connection state ------------------------------------------------------------------------


class ConnectionState(enum.StrEnum):
    """Where a platform's long connection is."""

    STARTING = "starting"
    """Not started yet (or a plugin that reports nothing, before its start returned)."""
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    """Lost; the plugin is reconnecting."""
    CLOSED = "closed"
    """Closed on purpose (the robot stopped)."""


@attrs.define
class ConnectionStatus:
    """A platform connection's state as its plugin reports it. Times are
    :func:`time.monotonic` seconds; methods are cheap and never raise, so plugins may call
    them on every frame.

    ``reconnects`` counts connections established after the first one (whatever the
    cause: a drop, a server's request to reconnect, a liveness timeout).
    """

    state: ConnectionState = ConnectionState.STARTING
    since: float = attrs.field(factory=time.monotonic)
    """When ``state`` was entered."""
    last_frame: float | None = None
    """When the last inbound frame (any: a message, a ping) arrived."""
    connections: int = 0
    """Connections established so far."""
    reconnects: int = 0
    reason: str | None = None
    """Why the connection was last lost, as the plugin said."""
    reported: bool = False
    """Whether the plugin ever reported a state (else the runtime infers it)."""
    rejections: int = 0
    """Inbound requests and frames the plugin rejected before they became messages or
    actions: forged, replayed or stale callbacks, unreadable or hostile frames."""

    def _enter(self, state: ConnectionState) -> None:
        if state is not self.state:
            self.state = state
            self.since = time.monotonic()

    def connecting(self) -> None:
        """A (re)connect is under way."""
        self.reported = True
        if self.state is not ConnectionState.CLOSED:
            self._enter(ConnectionState.CONNECTING)

    def connected(self) -> None:
        """A connection completed its handshake and can receive events."""
        self.reported = True
        if self.connections:
            self.reconnects += 1
        self.connections += 1
        self.reason = None
        self._enter(ConnectionState.CONNECTED)

    def disconnected(self, reason: str | None = None) -> None:
        """The connection was lost (the plugin will reconnect). ``reason``: one short line,
        without secrets."""
        self.reported = True
        if self.state is not ConnectionState.CLOSED:
            self.reason = reason
            self._enter(ConnectionState.DISCONNECTED)

    def closed(self) -> None:
        """The connection was closed on purpose."""
        self._enter(ConnectionState.CLOSED)

    def rejected(self) -> None:
        """An inbound request or frame was rejected (forged, replayed, stale, unreadable
        or hostile) and nothing was processed. Counted in ``rejections`` (the stop summary
        and ``imrobots_inbound_rejected_total``); the plugin logs the reason itself."""
        self.rejections += 1

    def frame_received(self, at: float | None = None) -> None:
        """An inbound frame arrived (call it for every frame, pings included)."""
        self.last_frame = time.monotonic() if at is None else at

    def last_frame_age(self, now: float | None = None) -> float | None:
        """Seconds since the last inbound frame, or ``None`` if none arrived yet."""
        if self.last_frame is None:
            return None
        return max(0.0, (time.monotonic() if now is None else now) - self.last_frame)


# --- call observation ------------------------------------------------------------------------


class CallObserver(Protocol):
    """Told about each platform call attempt that did not succeed at once."""

    def call_rate_limited(self) -> None:
        """The platform answered "rate limited"."""

    def call_failed(self) -> None:
        """An attempt failed (rate-limited, transient, outcome unknown or fatal)."""

    def call_retried(self) -> None:
        """Another attempt of the same call starts."""


_observer: contextvars.ContextVar[CallObserver | None] = contextvars.ContextVar(
    "imrobots_call_observer", default=None
)


def call_observer() -> CallObserver | None:
    """The observer of the robot whose task this is (``None`` outside a running robot)."""
    return _observer.get()


def observing_calls(observer: CallObserver) -> contextvars.Context:
    """A copy of the current context in which :func:`call_observer` is ``observer``: the
    runtime runs each of its tasks in one (``loop.create_task(coro, context=...)``)."""
    context = contextvars.copy_context()
    context.run(_observer.set, observer)
    return context


# --- histograms ------------------------------------------------------------------------------

LATENCY_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Upper bounds (seconds) of the latency histograms' buckets (plus ``+Inf``)."""


@attrs.define
class Histogram:
    """Observations counted into fixed buckets (seconds), as Prometheus histograms are."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = attrs.field(init=False)
    """Observations per bucket (not cumulative); the last is ``+Inf``."""
    sum: float = 0.0
    count: int = 0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, observations at or below it)`` pairs, ``+Inf`` last."""
        total = 0
        pairs = []
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += count
            pairs.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
        return pairs


# --- the HTTP server -------------------------------------------------------------------------


def health_report(runtimes: Sequence[RobotRuntime]) -> tuple[bool, dict[str, Any]]:
    """Whether every robot is connected, and the ``/healthz`` body."""
    now = time.monotonic()
    robots: dict[str, Any] = {}
    healthy = bool(runtimes)
    for runtime in runtimes:
        status = runtime.platform.connection_status
        age = status.last_frame_age(now)
        robots[runtime.name] = {
            "platform": runtime.platform.name,
            "state": status.state.value,
            "connected": status.state is ConnectionState.CONNECTED,
            "state_seconds": round(now - status.since, 3),
            "last_inbound_frame_age": None if age is None else round(age, 3),
            "reconnects": status.reconnects,
            "inbound_rejected": status.rejections,
        }
        healthy = healthy and status.state is ConnectionState.CONNECTED
    return healthy, {"status": "ok" if healthy else "unavailable", "robots": robots}


def _metrics_registry(runtimes: Sequence[RobotRuntime]) -> Any:
    """A prometheus-client registry reading the runtimes' counters at each scrape."""
    try:
        from prometheus_client import CollectorRegistry
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
    except ImportError:
        raise ConfigError(
            "/metrics needs prometheus-client, which is not installed: "
            'pip install "imrobots[metrics]"'
        ) from None

    counters = (
        ("received", "Messages received.", "received"),
        ("answered", "Messages whose answer reached the user.", "answered"),
        ("failed", "Messages whose handling failed or whose answer reached nobody.", "failed"),
        ("unanswered", "Messages whose handler sent nothing.", "unanswered"),
        (
            "interrupted",
            "Messages whose handling stop (or a newer message) cut, or left waiting.",
            "interrupted",
        ),
        ("rejected", "Messages rejected (stale, policy, overloaded, busy).", "rejected"),
        ("deduplicated", "Redeliveries dropped as duplicates.", "duplicates"),
        ("card_updates", "Card updates sent while streaming answers.", "card_updates"),
        ("rate_limited", "Platform calls answered rate-limited.", "rate_limited"),
        ("call_retries", "Platform call attempts that repeated a failed one.", "retries"),
        ("call_errors", "Platform call attempts that failed.", "call_errors"),
        ("feedback", "Feedback presses stored.", "feedback"),
        ("feedback_rejected", "Feedback presses rejected as forged or replayed.", "forged"),
        ("handler_timeouts", "Handlers cut by handler_timeout.", "handler_timeouts"),
        (
            "recovered",
            "Answers a gone process left open, closed here as interrupted.",
            "recovered",
        ),
        (
            "adopted",
            "Messages a gone replica had taken in and not answered, answered here.",
            "adopted",
        ),
    )
    histograms = (
        (
            "answer_latency_seconds",
            "Seconds from a message's arrival to its answer's end.",
            "answer_latency",
        ),
        (
            "first_update_latency_seconds",
            "Seconds from an agent's first text to the first card update showing text.",
            "first_update_latency",
        ),
    )

    class Collector:
        def collect(self) -> Iterator[Any]:
            labels = ["robot", "platform"]
            for name, doc, field in counters:
                family = CounterMetricFamily(f"imrobots_{name}", doc, labels=labels)
                for r in runtimes:
                    family.add_metric([r.name, r.platform.name], getattr(r.stats, field))
                yield family
            reconnects = CounterMetricFamily(
                "imrobots_reconnects", "Platform connections re-established.", labels=labels
            )
            connected = GaugeMetricFamily(
                "imrobots_connected", "1 when the platform connection is up.", labels=labels
            )
            age = GaugeMetricFamily(
                "imrobots_last_inbound_frame_age_seconds",
                "Seconds since the platform last sent a frame (NaN: none yet).",
                labels=labels,
            )
            for r in runtimes:
                status = r.platform.connection_status
                key = [r.name, r.platform.name]
                reconnects.add_metric(key, status.reconnects)
                connected.add_metric(key, 1 if status.state is ConnectionState.CONNECTED else 0)
                frame_age = status.last_frame_age()
                age.add_metric(key, math.nan if frame_age is None else frame_age)
            yield reconnects
            inbound = CounterMetricFamily(
                "imrobots_inbound_rejected",
                "Inbound requests or frames rejected as forged, replayed, stale or malformed.",
                labels=labels,
            )
            for r in runtimes:
                inbound.add_metric(
                    [r.name, r.platform.name], r.platform.connection_status.rejections
                )
            yield inbound
            yield connected
            yield age
            for name, doc, field in histograms:
                spread = HistogramMetricFamily(f"imrobots_{name}", doc, labels=labels)
                for r in runtimes:
                    histogram: Histogram = getattr(r.stats, field)
                    spread.add_metric(
                        [r.name, r.platform.name],
                        [(bound, float(count)) for bound, count in histogram.cumulative()],
                        histogram.sum,
                    )
                yield spread

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return registry


class HealthServer:
    """``/healthz`` and ``/metrics`` for a set of running robots, on ``host:port``.

    Binds 127.0.0.1 unless told otherwise: the endpoints carry no secrets but say what
    runs here. Raises :class:`ConfigError` at :meth:`start` when prometheus-client is
    missing (``pip install "imrobots[metrics]"``), and ``OSError`` when the port is taken.
    """

    def __init__(
        self, runtimes: Sequence[RobotRuntime], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.runtimes = list(runtimes)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Serve; return the base URL (``http://host:port``)."""
        from aiohttp import web

        registry = _metrics_registry(self.runtimes)  # fails early when the extra is missing
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def healthz(request: web.Request) -> web.Response:
            healthy, body = health_report(self.runtimes)
            return web.Response(
                text=json.dumps(body, ensure_ascii=False),
                status=200 if healthy else 503,
                content_type="application/json",
            )

        async def metrics(request: web.Request) -> web.Response:
            body = generate_latest(registry)
            response = web.Response(body=body)
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses  # the port actually bound (port 0: any free one)
        if addresses:
            self.port = int(addresses[0][1])
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
