"""Prometheus metrics of one service process, served on its own private port.

The hot path only adds to plain integers (``Stats``); ``prometheus_client`` turns them into
metric families when Prometheus scrapes, so a delivery costs one dictionary increment, not a
lock. The metrics port answers ``GET /metrics`` and nothing else: it never upgrades to a
WebSocket, and the firewall opens it to the monitoring host only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from http import HTTPStatus

from picows import WSUpgradeRequest, WSUpgradeResponseWithListener
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from wssfleet import protocol
from wssfleet.connection import http_response

# Label values a counter always shows, at 0 until it happens: a rate() over a series that
# appears only with its first event misses that event.
HANDSHAKE_REFUSALS = ("origin", "token", "request", "subject_connections")
RECEIVED_TYPES = (*protocol.CLIENT_TYPES, "invalid")
DELIVERED_TYPES = protocol.SERVER_TYPES
DROP_CAUSES = ("queue_overflow", "rate_limit", "too_big", "unsupported")
REQUEST_REFUSALS = (
    "not_allowed",
    "bus_unavailable",
    "too_many_channels",
    "too_big",
    "limit",
    "not_confirmed",
    "token",
)
RECOVERY_RESULTS = ("recovered", "not_recovered")
CLOSE_REASONS = (
    "drain",
    "rebalance",
    "overflow",
    "control_flood",
    "token_expired",
    "recovery_backlog",
)


class Stats:
    """What one process has done since it started, as plain counters."""

    def __init__(self) -> None:
        self.connections_opened = 0
        self.handshakes_refused: Counter[str] = Counter(dict.fromkeys(HANDSHAKE_REFUSALS, 0))
        self.received: Counter[str] = Counter(dict.fromkeys(RECEIVED_TYPES, 0))
        self.delivered: Counter[str] = Counter(dict.fromkeys(DELIVERED_TYPES, 0))
        self.drops: Counter[str] = Counter(dict.fromkeys(DROP_CAUSES, 0))
        self.requests_refused: Counter[str] = Counter(dict.fromkeys(REQUEST_REFUSALS, 0))
        self.recoveries: Counter[str] = Counter(dict.fromkeys(RECOVERY_RESULTS, 0))
        self.recovered_messages = 0
        self.joined_live = 0
        self.history_lost = 0
        self.closes: Counter[str] = Counter(dict.fromkeys(CLOSE_REASONS, 0))


class ServiceCollector(Collector):
    """Reads a process's Stats and live state (``gauges``) at scrape time."""

    def __init__(self, stats: Stats, gauges: Callable[[], dict[str, float]]) -> None:
        self.stats = stats
        self.gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.stats
        live = self.gauges()
        yield _gauge("wssfleet_connections", "Open WebSocket connections", live["connections"])
        yield _gauge("wssfleet_channels", "Channels with a subscriber here", live["channels"])
        yield _gauge(
            "wssfleet_bus_connected",
            "1 when the Redis bus is connected (or not used)",
            live["bus_connected"],
        )
        yield _gauge("wssfleet_draining", "1 while this process drains", live["draining"])
        yield _gauge(
            "wssfleet_history_reads_waiting",
            "History reads waiting their turn (each subject's in rotation)",
            live["history_reads_waiting"],
        )
        yield _counter(
            "wssfleet_connections_opened",
            "WebSocket connections accepted",
            stats.connections_opened,
        )
        yield _counter(
            "wssfleet_bus_messages",
            "Messages this process received from the bus",
            live["bus_messages"],
        )
        yield _labelled(
            "wssfleet_handshakes_refused",
            "Upgrade requests refused, by reason",
            "reason",
            stats.handshakes_refused,
        )
        yield _labelled(
            "wssfleet_messages_received",
            "Frames received from clients, by type",
            "type",
            stats.received,
        )
        yield _labelled(
            "wssfleet_messages_delivered",
            "Frames queued to clients, by type",
            "type",
            stats.delivered,
        )
        yield _labelled(
            "wssfleet_drops",
            "Frames dropped, by cause (a client's or for a client)",
            "cause",
            stats.drops,
        )
        yield _labelled(
            "wssfleet_requests_refused",
            "Subscribes and publishes refused, by reason",
            "reason",
            stats.requests_refused,
        )
        yield _labelled(
            "wssfleet_recoveries",
            "Subscribes with since, by whether the history covered them",
            "result",
            stats.recoveries,
        )
        yield _counter(
            "wssfleet_recovered_messages",
            "Messages replayed to recovering clients",
            stats.recovered_messages,
        )
        yield _counter(
            "wssfleet_joins_live",
            "Subscribes without since answered from a channel live here, with no history read",
            stats.joined_live,
        )
        yield _counter(
            "wssfleet_history_lost",
            "Channels whose history no longer reached back after a bus outage",
            stats.history_lost,
        )
        yield _labelled(
            "wssfleet_closes",
            "Clients this process closed on purpose, by reason",
            "reason",
            stats.closes,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _labelled(
    name: str, documentation: str, label: str, values: Counter[str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def registry(stats: Stats, gauges: Callable[[], dict[str, float]]) -> CollectorRegistry:
    """The process's own registry: its service metrics and the process's CPU, memory, file
    descriptors and Python runtime."""
    own = CollectorRegistry(auto_describe=True)
    own.register(ServiceCollector(stats, gauges))
    ProcessCollector(registry=own)
    PlatformCollector(registry=own)
    GCCollector(registry=own)
    return own


def responder(
    metrics: CollectorRegistry,
) -> Callable[[WSUpgradeRequest], WSUpgradeResponseWithListener]:
    """The metrics listener's router: /metrics or 404, never an upgrade."""

    def respond(request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        if request.path.split(b"?", 1)[0] != b"/metrics":
            return http_response(HTTPStatus.NOT_FOUND, b"only /metrics here\n")
        return http_response(HTTPStatus.OK, generate_latest(metrics), CONTENT_TYPE_LATEST)

    return respond
