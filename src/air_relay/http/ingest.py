"""``POST /v1/air/events`` (the path is ``ingest.path``): what AIR calls.

The event and one delivery per routed sink commit in one statement before the 202. If the
database cannot take the write, the event goes to the local spool (``db/spool.py``) and the
202 says ``"spooled": true`` once it is on disk; while the spool holds events, new ones go
there too, so that they reach the database in arrival order. Without a spool, or when it is
full or the disk refuses the write, the answer is 503 with Retry-After, never a 202.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from air_relay.db.pool import DB_UNAVAILABLE
from air_relay.db.spool import SpoolFull
from air_relay.events import parameter_mismatches
from air_relay.http.auth import ingest_tenant
from air_relay.http.errors import ApiError, unavailable
from air_relay.http.jsonbody import is_json_content_type, read_json
from air_relay.http.state import CONFIG, DISPATCHER, INGEST_BATCHER, METRICS, SPOOL
from air_relay.model import NewEvent, SpooledEvent
from air_relay.ordering import order_keys
from air_relay.validation import storable

log = structlog.get_logger(__name__)

MAX_EVENT_NAME = 256
# What web.json_response sets.
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def validate_envelope(value: Any) -> tuple[str, int | str]:
    """(eventName, organizationId) of a well-formed envelope; ApiError 422 otherwise."""

    def invalid(message: str) -> ApiError:
        return ApiError(422, "invalid_event", message)

    if not isinstance(value, dict):
        raise invalid("The body must be a JSON object (the AIR event envelope).")
    name = value.get("eventName")
    if not isinstance(name, str) or not name.strip():
        raise invalid("eventName must be a non-empty string.")
    if not storable(name):
        raise invalid("eventName must not contain NUL or unpaired surrogate characters.")
    if len(name) > MAX_EVENT_NAME:
        raise invalid(f"eventName must be at most {MAX_EVENT_NAME} characters.")
    if "organizationId" not in value:
        raise invalid("organizationId is required.")
    org = value["organizationId"]
    if isinstance(org, bool) or not isinstance(org, int | str) or org == "":
        raise invalid("organizationId must be an integer or a non-empty string.")
    if isinstance(org, str) and (not storable(org) or len(org) > MAX_EVENT_NAME):
        raise invalid("organizationId must be printable text of at most 256 characters.")
    if isinstance(org, int) and not -(2**63) <= org < 2**63:
        raise invalid("organizationId is out of range.")
    if not isinstance(value.get("data"), dict):
        raise invalid("data must be a JSON object.")
    return name, org


async def handle_ingest(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    try:
        tenant_id = ingest_tenant(request)
        if not is_json_content_type(request):
            raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json.")
        raw, value = await read_json(request, app[CONFIG].server.max_body_bytes)
        event_name, org = validate_envelope(value)
    except ApiError as exc:
        metrics.ingest_rejected.labels(exc.code).inc()
        raise

    mismatches = parameter_mismatches(event_name, value["data"])
    if mismatches:
        metrics.event_schema_mismatches.labels(metrics.event_label(event_name)).inc()
        log.warning("event_schema_mismatch", event_name=event_name, problems=mismatches)

    keys = order_keys(event_name, value["data"])
    event = NewEvent(uuid.uuid4(), tenant_id, event_name, org, raw, keys)
    arrived = time.time()
    spool = app.get(SPOOL)
    if spool is not None and spool.spooling and await spool.accepts():
        return await _spool(request, event, arrived)
    try:
        deliveries = await app[INGEST_BATCHER].submit(event)
    except DB_UNAVAILABLE as exc:
        # Whatever stopped the commit (server gone, read-only after failover, disk full),
        # AIR must hear "not accepted, retry" rather than a 500 or a 202: unless the spool
        # keeps the event.
        log.warning("event_not_committed", event_name=event_name, error=type(exc).__name__)
        if spool is not None:
            return await _spool(request, event, arrived)
        metrics.ingest_rejected.labels("unavailable").inc()
        raise unavailable() from exc
    if deliveries and DISPATCHER in app:
        app[DISPATCHER].wake()  # same process: no need to wait for the NOTIFY round trip
    return _accepted(request, event, {"deliveries": deliveries})


async def _spool(request: web.Request, event: NewEvent, arrived: float) -> web.Response:
    """Append the event to the spool: 202 spooled once it is on disk, else 503."""
    app = request.app
    metrics = app[METRICS]
    try:
        await app[SPOOL].append(SpooledEvent(event, datetime.fromtimestamp(arrived, UTC)))
    except (SpoolFull, OSError) as exc:
        metrics.ingest_rejected.labels("unavailable").inc()
        log.warning(
            "event_not_spooled",
            event_name=event.event_name,
            error=type(exc).__name__,
            detail=str(exc)[:200],
        )
        raise unavailable() from exc
    metrics.events_spooled.inc()
    return _accepted(request, event, {"deliveries": None, "spooled": True})


def _accepted(request: web.Request, event: NewEvent, outcome: dict[str, Any]) -> web.Response:
    """The 202 for an event committed or spooled (``outcome``: its deliveries, whether it
    was spooled), counted and logged the same way either way."""
    request.app[METRICS].count_received(event.event_name)
    event_id = str(event.event_id)
    log.info(
        "event_received",
        event_id=event_id,
        event_name=event.event_name,
        organization_id=event.organization_id,
        tenant_id=event.tenant_id,
        **outcome,
    )
    deliveries = outcome["deliveries"]
    if len(outcome) == 1 and type(deliveries) is int:
        # The committed event's body, byte for byte what json_response would make of it,
        # without its encoder: a UUID's text and an integer need no escaping.
        body = b'{"event_id": "%s", "deliveries": %d}' % (event_id.encode(), deliveries)
        return web.Response(body=body, status=202, headers=_JSON_HEADERS)
    return web.json_response({"event_id": event_id, **outcome}, status=202)
