"""Prometheus metrics, one registry per running app (tests start many apps in one process)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from air_relay.events import catalog
from air_relay.model import DEAD, DELIVERED, FAILING, SinkHealth

# The *_created series double the output for no use here.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self, sink_types: Sequence[str] = ()) -> None:
        """``sink_types``: the sink types whose delivery outcomes are exported from the
        start (see below)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_received = Counter(
            "air_relay_events_received",
            "AIR events accepted (202), by eventName; unknown names count as 'other'.",
            ["event_name"],
            registry=r,
        )
        self._received: dict[str, Counter] = {}
        self.event_schema_mismatches = Counter(
            "air_relay_event_schema_mismatches",
            "Accepted events whose data did not match the AIR catalog.",
            ["event_name"],
            registry=r,
        )
        self.ingest_rejected = Counter(
            "air_relay_ingest_rejected",
            "Ingest requests answered with an error, by error code.",
            ["code"],
            registry=r,
        )
        self.deliveries = Counter(
            "air_relay_deliveries",
            "Deliveries that reached a final state.",
            ["sink_type", "outcome"],
            registry=r,
        )
        # Exported at 0 from the start: a labelled series that first appears at 1 (the first
        # dead delivery after a restart) has no increase() in Prometheus, so the dead-delivery
        # alert (contrib/prometheus/rules.yaml) would miss it.
        for sink_type in sink_types:
            for outcome in (DELIVERED, DEAD):
                self.deliveries.labels(sink_type, outcome)
        self.attempts_failed = Counter(
            "air_relay_delivery_attempts_failed",
            "Failed delivery attempts, by reason.",
            ["sink_type", "reason"],
            registry=r,
        )
        self.delivery_duration = Histogram(
            "air_relay_delivery_duration_seconds",
            "Duration of one delivery attempt (HTTP request to the sink).",
            ["sink_type"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.deliveries_pending = Gauge(
            "air_relay_deliveries_pending", "Deliveries not yet delivered or dead.", registry=r
        )
        self.oldest_pending_age = Gauge(
            "air_relay_oldest_pending_age_seconds",
            "Age of the oldest pending delivery.",
            registry=r,
        )
        # Per sink, set at each scrape from the sink health the database keeps (db/health.py).
        # Labels: the sink's id and type only (never its name, URL or credentials).
        sink = ["sink_id", "sink_type"]
        self.sink_failing = Gauge(
            "air_relay_sink_failing",
            "1 while the sink's latest attempt failed (state failing), else 0.",
            sink,
            registry=r,
        )
        self.sink_consecutive_failures = Gauge(
            "air_relay_sink_consecutive_failures",
            "Failed attempts since the sink's latest success.",
            sink,
            registry=r,
        )
        self.sink_pending = Gauge(
            "air_relay_sink_deliveries_pending", "The sink's pending deliveries.", sink, registry=r
        )
        self.sink_dead = Gauge(
            "air_relay_sink_deliveries_dead",
            "The sink's dead deliveries still in the database.",
            sink,
            registry=r,
        )
        self.sink_oldest_pending_age = Gauge(
            "air_relay_sink_oldest_pending_age_seconds",
            "Age of the sink's oldest pending delivery (0 when none).",
            sink,
            registry=r,
        )
        self.spool_events = Gauge(
            "air_relay_spool_events",
            "Events in the local spool, waiting for the database.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "air_relay_spool_bytes", "Bytes of the local spool's segment files.", registry=r
        )
        self.events_spooled = Counter(
            "air_relay_events_spooled",
            "Events accepted into the local spool (202 spooled) while the database was away.",
            registry=r,
        )

        self.http_connections = Gauge(
            "air_relay_http_connections",
            "Open client connections to the HTTP server (at most server.max_connections).",
            registry=r,
        )
        self.http_connections_refused = Counter(
            "air_relay_http_connections_refused",
            "Client connections closed at once because server.max_connections were open.",
            registry=r,
        )
        self.slow_connections_closed = Counter(
            "air_relay_http_slow_connections_closed",
            "Client connections closed for sending their headers or body too slowly.",
            ["phase"],
            registry=r,
        )

    def set_sink_health(self, rows: Sequence[SinkHealth], now: datetime) -> None:
        """The per-sink gauges from ``rows`` (every sink): a deleted sink's series go."""
        gauges = (
            self.sink_failing,
            self.sink_consecutive_failures,
            self.sink_pending,
            self.sink_dead,
            self.sink_oldest_pending_age,
        )
        for gauge in gauges:
            gauge.clear()
        for h in rows:
            labels = (str(h.event_sink_id), h.type)
            self.sink_failing.labels(*labels).set(1 if h.state == FAILING else 0)
            self.sink_consecutive_failures.labels(*labels).set(h.consecutive_failures)
            self.sink_pending.labels(*labels).set(h.pending)
            self.sink_dead.labels(*labels).set(h.dead)
            oldest = h.oldest_pending_at
            age = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
            self.sink_oldest_pending_age.labels(*labels).set(age)

    def event_label(self, event_name: str) -> str:
        # Bounded label set: event names come from outside.
        return event_name if event_name in catalog() else "other"

    def count_received(self, event_name: str) -> None:
        """One more accepted event of ``event_name`` (``events_received``)."""
        label = self.event_label(event_name)
        # labels() validates and locks at every call: each series' child is looked up once
        # (keyed by the label, so the dict is as bounded as the label set).
        child = self._received.get(label)
        if child is None:
            child = self._received[label] = self.events_received.labels(label)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
