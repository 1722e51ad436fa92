"""The health module's parts on their own: connection states and histograms."""

from __future__ import annotations

import pytest

from imrobots.health import ConnectionState, ConnectionStatus, Histogram
from imrobots.memory import MemoryPlatform


def test_connection_status_counts_reconnects_and_keeps_closed() -> None:
    status = ConnectionStatus()
    assert status.state is ConnectionState.STARTING and status.last_frame_age() is None
    status.connecting()
    status.connected()
    assert status.reconnects == 0 and status.state is ConnectionState.CONNECTED
    status.frame_received(at=100.0)
    assert status.last_frame_age(now=102.5) == 2.5
    status.disconnected("socket error")
    assert status.state is ConnectionState.DISCONNECTED and status.reason == "socket error"
    status.connecting()
    status.connected()
    assert status.reconnects == 1 and status.connections == 2 and status.reason is None
    status.closed()
    status.disconnected("late report")  # a report after close does not reopen it
    assert status.state is ConnectionState.CLOSED


def test_rejected_inbound_requests_are_counted_whatever_the_state() -> None:
    status = ConnectionStatus()
    status.rejected()
    status.connected()
    status.rejected()
    status.closed()
    status.rejected()  # a late one after close still counts
    assert status.rejections == 3 and status.state is ConnectionState.CLOSED


def test_every_platform_has_its_own_status() -> None:
    one, two = MemoryPlatform(), MemoryPlatform()
    assert one.connection_status is one.connection_status
    assert one.connection_status is not two.connection_status
    assert not one.connection_status.reported


def test_histogram_buckets_are_cumulative_like_prometheus() -> None:
    histogram = Histogram(buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(3.65)
