"""Dead letters, retry and replay: ``GET /v1/delivery``, ``POST /v1/delivery/{id}/retry`` and
``POST /v1/event_sink/{id}/replay``. A delivery's id in a path may be its UUID or its
``webhook-id`` (``msg_`` and the UUID's hex digits).

Tenant scoping follows the sink API: a list for a tenant the key does not hold is a 403, a
delivery or sink of another tenant is a 404 (its existence is not revealed). Retry and replay
are operator actions: each is recorded in ``operator_actions`` in the same statement as the
requeue, and logged, with a fingerprint of the API key as the actor (never the key itself).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from air_relay.db import repository as repo
from air_relay.http.auth import api_key, held_tenants, key_fingerprint, query_tenant
from air_relay.http.errors import ApiError
from air_relay.http.jsonbody import read_api_json
from air_relay.http.params import (
    decode_time_id_cursor,
    keyset_page,
    optional,
    page_limit,
    parse_time,
    parse_uuid,
    text_param,
    time_id_cursor,
    uuid_param,
)
from air_relay.http.sinks_api import visible_sink
from air_relay.http.state import POOL
from air_relay.model import (
    DEAD,
    DELIVERED,
    DISMISSED,
    FINISHED_STATUSES,
    PENDING,
    DeliveryEntry,
    DeliveryFilter,
    Replay,
    Sink,
)
from air_relay.timestamps import rfc3339
from air_relay.validation import InvalidArgument, reject_unknown

log = structlog.get_logger(__name__)

STATUS_FILTERS = (PENDING, DELIVERED, DEAD, DISMISSED, "all")
# What each replay ``status`` requeues; "all" is every finished delivery, never a pending one.
REPLAY_STATUSES: dict[str, tuple[str, ...]] = {
    DEAD: (DEAD,),
    DELIVERED: (DELIVERED,),
    "all": FINISHED_STATUSES,
}
_REPLAY_FIELDS = ("since", "until", "status")
_NO_DELIVERY = "No delivery with that id."
# A delivery's webhook-id, as Webhook sinks send it, is this and its UUID's 32 hex digits.
WEBHOOK_ID_PREFIX = "msg_"


# --- delivery ids ----------------------------------------------------------------------------


def webhook_id(delivery_id: uuid.UUID) -> str:
    """The ``webhook-id`` Webhook sinks send for a delivery (see sinks/webhook.py)."""
    return f"{WEBHOOK_ID_PREFIX}{delivery_id.hex}"


def delivery_ref(value: str) -> uuid.UUID | None:
    """A delivery id from its UUID or its ``msg_<32 hex digits>`` form; None otherwise."""
    if value.startswith(WEBHOOK_ID_PREFIX):
        digits = value[len(WEBHOOK_ID_PREFIX) :]
        if len(digits) != 32 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            return None
        return uuid.UUID(hex=digits)
    return parse_uuid(value)


# --- GET /v1/delivery ---------------------------------------------------------------------------


def cursor_of(d: DeliveryEntry) -> str:
    return time_id_cursor(d.created_at, d.id)


def parse_filter(q: Mapping[str, str], tenant_id: str) -> DeliveryFilter:
    status = q.get("status", "all")
    if status not in STATUS_FILTERS:
        raise InvalidArgument("status", "must be pending, delivered, dead, dismissed or all")
    return DeliveryFilter(
        tenant_id=tenant_id,
        status=None if status == "all" else status,
        event_sink_id=optional(q, "event_sink_id", uuid_param),
        event_name=optional(q, "event_name", text_param),
        since=optional(q, "since", parse_time),
        until=optional(q, "until", parse_time),
        before=optional(q, "cursor", decode_time_id_cursor),
        limit=page_limit(q),
    )


def render_entry(d: DeliveryEntry) -> dict[str, Any]:
    return {
        "id": str(d.id),
        "tenant_id": d.tenant_id,
        "event_id": str(d.event_id),
        "event_name": d.event_name,
        "organization_id": d.organization_id,
        "event_sink_id": str(d.event_sink_id),
        "event_sink_type": d.event_sink_type,
        "status": d.status,
        "attempts": d.attempts,
        "last_error": d.last_error,
        # While a delivery is claimed this is the end of its lease.
        "next_attempt_at": rfc3339(d.next_attempt_at) if d.status == PENDING else None,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.updated_at),
        "failed_over_to": str(d.failed_over_to) if d.failed_over_to else None,
        "failed_over_from": str(d.failed_over_from) if d.failed_over_from else None,
        # The storm digest this delivery went out in (or waits for), if any.
        "digest_id": str(d.digest_id) if d.digest_id else None,
    }


async def list_deliveries(request: web.Request) -> web.Response:
    tenant_id = query_tenant(request, api_key(request))
    flt = parse_filter(request.query, tenant_id)
    # One row more than asked tells whether another page exists.
    rows = await repo.delivery_page(
        request.app[POOL], dataclasses.replace(flt, limit=flt.limit + 1)
    )
    page, pagination = keyset_page(rows, flt.limit, cursor_of)
    return web.json_response(
        {"data": {"deliveries": [render_entry(d) for d in page]}, "pagination": pagination}
    )


# --- POST /v1/delivery/{id}/retry -------------------------------------------------------------


def sink_deleted_error(
    message: str = "The delivery's event sink was deleted, so it cannot be retried; "
    "it can be dismissed.",
) -> ApiError:
    return ApiError(409, "sink_deleted", message)


async def retry_delivery(request: web.Request) -> web.Response:
    key = api_key(request)
    delivery_id = delivery_ref(request.match_info["id"])
    if delivery_id is None:
        raise ApiError(404, "not_found", _NO_DELIVERY)
    actor = key_fingerprint(key)
    result = await repo.retry_delivery(
        request.app[POOL], delivery_id, tenant_ids=held_tenants(key), actor=actor
    )
    if result is None:
        raise ApiError(404, "not_found", _NO_DELIVERY)
    if result.previous_status != DEAD:
        raise ApiError(
            409,
            "delivery_not_dead",
            f"The delivery is {result.previous_status}; only a dead delivery can be retried.",
        )
    if result.delivery is None:
        raise sink_deleted_error()
    entry = render_entry(result.delivery)
    log.info(
        "delivery_retry_requested",
        tenant_id=entry["tenant_id"],
        actor=actor,
        target=str(delivery_id),
        params={"attempts_before": entry["attempts"]},
        affected=1,
    )
    return web.json_response({"data": {"delivery": entry}}, status=202)


# --- POST /v1/event_sink/{id}/replay ----------------------------------------------------------


def _time_field(body: Mapping[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(name, "must be an RFC 3339 timestamp string")
    return parse_time(name, value)


def parse_replay(body: Mapping[str, Any], sink: Sink, actor: str, now: datetime) -> Replay:
    reject_unknown(body, _REPLAY_FIELDS)
    since = _time_field(body, "since")
    if since is None:
        raise InvalidArgument("since", "is required")
    until = _time_field(body, "until") or now
    if since > until:
        raise InvalidArgument("since", "must not be later than until")
    status = body.get("status", "all")
    if not isinstance(status, str) or status not in REPLAY_STATUSES:
        raise InvalidArgument("status", "must be dead, delivered or all")
    return Replay(
        tenant_id=sink.tenant_id,
        event_sink_id=sink.id,
        statuses=REPLAY_STATUSES[status],
        since=since,
        until=until,
        actor=actor,
        params={"since": rfc3339(since), "until": rfc3339(until), "status": status},
    )


async def replay_sink(request: web.Request) -> web.Response:
    key = api_key(request)
    sink = await visible_sink(request, key)
    body = await read_api_json(request)
    actor = key_fingerprint(key)
    # An inactive sink is still replayed: the operator asked for exactly this sink.
    replay = parse_replay(body, sink, actor, datetime.now(UTC))
    requeued = await repo.replay_sink(request.app[POOL], replay)
    log.info(
        "sink_replay_requested",
        tenant_id=sink.tenant_id,
        actor=actor,
        target=str(sink.id),
        params=replay.params,
        affected=requeued,
    )
    return web.json_response({"data": {"requeued": requeued}}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/delivery", list_deliveries)
    app.router.add_post("/v1/delivery/{id}/retry", retry_delivery)
    app.router.add_post("/v1/event_sink/{id}/replay", replay_sink)
