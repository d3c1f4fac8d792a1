"""Prometheus metrics, one registry per running app (tests start many apps in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from air_relay.events import catalog

# The *_created series double the output for no use here.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_received = Counter(
            "air_relay_events_received",
            "AIR events accepted (202), by eventName; unknown names count as 'other'.",
            ["event_name"],
            registry=r,
        )
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

    def event_label(self, event_name: str) -> str:
        # Bounded label set: event names come from outside.
        return event_name if event_name in catalog() else "other"

    def render(self) -> bytes:
        return generate_latest(self.registry)
