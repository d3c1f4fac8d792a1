"""Inspecting and cleaning up dead letters: ``GET /v1/delivery/{id}`` (one delivery, its event
as received and its attempts), ``POST /v1/delivery/retry`` and ``POST /v1/delivery/dismiss``
(many dead deliveries at once, chosen by the listing's filters).

The path id is the delivery's UUID or the ``webhook-id`` a Webhook receiver got
(``msg_`` plus the UUID's 32 hex digits), so a receiver's log line leads straight to it.

The bulk actions are scoped like the listing: one tenant, named in the body and held by the
key (403 otherwise), so no request means "every tenant". Each call touches at most ``limit``
deliveries, oldest first, and says whether more remain; each is recorded in
``operator_actions`` in the same statement (with the ids it touched) and logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from air_relay.config import ApiKey
from air_relay.db import repository as repo
from air_relay.http import audit_api
from air_relay.http.auth import api_key, held_tenants, key_fingerprint, require_tenant
from air_relay.http.delivery_api import (
    delivery_ref,
    render_entry,
    sink_deleted_error,
    webhook_id,
)
from air_relay.http.errors import ApiError
from air_relay.http.jsonbody import read_api_json
from air_relay.http.params import DEFAULT_LIMIT, MAX_LIMIT, parse_time, uuid_param
from air_relay.http.state import POOL
from air_relay.model import DEAD, BulkAction, BulkResult, DeliveryDetail
from air_relay.timestamps import rfc3339
from air_relay.validation import InvalidArgument, reject_unknown, text_field

log = structlog.get_logger(__name__)

# Attempts shown with a delivery: the newest ones. A delivery that went dead once has at most
# attempts_per_claim x len(schedule_seconds) of them; each manual retry adds another run.
MAX_ATTEMPTS_SHOWN = 100
_NO_DELIVERY = "No delivery with that id."
_BULK_FIELDS = ("tenant_id", "status", "event_sink_id", "event_name", "since", "until", "limit")


# --- GET /v1/delivery/{id} ----------------------------------------------------------------------


def _envelope(body: bytes) -> Any:
    """The stored event as JSON (ingest only stores JSON it parsed); None if it is not."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def render_detail(d: DeliveryDetail) -> dict[str, Any]:
    entry = render_entry(d.delivery)
    entry["webhook_id"] = webhook_id(d.delivery.id)
    entry["event_sink_deleted"] = not d.sink_exists
    return {
        "delivery": entry,
        "event": {
            "id": str(d.delivery.event_id),
            "received_at": rfc3339(d.received_at),
            "envelope": _envelope(d.body),
        },
        "attempts": [audit_api.render_entry(a) for a in d.attempts],
        "more_attempts": d.more_attempts,
    }


async def get_delivery(request: web.Request) -> web.Response:
    key = api_key(request)
    delivery_id = delivery_ref(request.match_info["id"])
    if delivery_id is None:
        raise ApiError(404, "not_found", _NO_DELIVERY)
    detail = await repo.delivery_detail(
        request.app[POOL],
        delivery_id,
        tenant_ids=held_tenants(key),
        max_attempts=MAX_ATTEMPTS_SHOWN,
    )
    if detail is None:
        raise ApiError(404, "not_found", _NO_DELIVERY)
    return web.json_response({"data": render_detail(detail)})


# --- POST /v1/delivery/retry and /v1/delivery/dismiss --------------------------------------


def _text(body: Mapping[str, Any], name: str) -> str | None:
    """An optional string field: absent or null is None; else a non-empty storable string of
    at most 1024 characters, as the sink API takes its text."""
    value = body.get(name)
    return None if value is None else text_field(value, name)


def _limit(body: Mapping[str, Any]) -> int:
    value = body.get("limit", DEFAULT_LIMIT)
    # bool is an int in Python; true is no count.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidArgument("limit", f"must be an integer between 1 and {MAX_LIMIT}")
    return value


def parse_bulk(body: Mapping[str, Any], key: ApiKey, actor: str) -> BulkAction:
    """The action a bulk body asks for; the key must hold its tenant."""
    reject_unknown(body, _BULK_FIELDS)
    tenant_id = _text(body, "tenant_id")
    if tenant_id is None:
        raise InvalidArgument("tenant_id", "is required")
    require_tenant(key, tenant_id)
    status = body.get("status", DEAD)
    if status != DEAD:
        raise InvalidArgument(
            "status", "must be dead (only dead deliveries are retried or dismissed)"
        )
    sink_text = _text(body, "event_sink_id")
    sink_id = uuid_param("event_sink_id", sink_text) if sink_text is not None else None
    since_text, until_text = _text(body, "since"), _text(body, "until")
    since = parse_time("since", since_text) if since_text else None
    until = parse_time("until", until_text) if until_text else None
    if since and until and since > until:
        raise InvalidArgument("since", "must not be later than until")
    limit = _limit(body)
    event_name = _text(body, "event_name")
    params: dict[str, Any] = {
        "status": DEAD,
        "event_sink_id": str(sink_id) if sink_id else None,
        "event_name": event_name,
        "since": rfc3339(since),
        "until": rfc3339(until),
        "limit": limit,
    }
    return BulkAction(
        tenant_id=tenant_id,
        event_sink_id=sink_id,
        event_name=event_name,
        since=since,
        until=until,
        limit=limit,
        actor=actor,
        params={k: v for k, v in params.items() if v is not None},
    )


async def _bulk_action(request: web.Request) -> BulkAction:
    key = api_key(request)
    body = await read_api_json(request)
    return parse_bulk(body, key, key_fingerprint(key))


def _log(event: str, action: BulkAction, result: BulkResult) -> None:
    log.info(
        event,
        tenant_id=action.tenant_id,
        actor=action.actor,
        params=action.params,
        affected=result.affected,
        more=result.more,
    )


async def retry_deliveries(request: web.Request) -> web.Response:
    action = await _bulk_action(request)
    result = await repo.retry_deliveries(request.app[POOL], action)
    if result.affected == 0 and result.sink_deleted > 0:
        # Nothing else matched: say why rather than answer "0 requeued".
        raise sink_deleted_error(
            "The matching dead deliveries belong to deleted event sinks, so they cannot be "
            "retried; they can be dismissed."
        )
    _log("deliveries_retried", action, result)
    return web.json_response(
        {
            "data": {
                "requeued": result.affected,
                "more": result.more,
                "sink_deleted": result.sink_deleted,
            }
        },
        status=202,
    )


async def dismiss_deliveries(request: web.Request) -> web.Response:
    action = await _bulk_action(request)
    result = await repo.dismiss_deliveries(request.app[POOL], action)
    _log("deliveries_dismissed", action, result)
    return web.json_response({"data": {"dismissed": result.affected, "more": result.more}})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/delivery/retry", retry_deliveries)
    app.router.add_post("/v1/delivery/dismiss", dismiss_deliveries)
    # The id is any segment but the two fixed ones: a GET of /v1/delivery/retry is then a 405
    # that allows POST only, not a GET that "no delivery" answers (and Allow would advertise).
    app.router.add_get("/v1/delivery/{id:(?!(?:retry|dismiss)$)[^{}/]+}", get_delivery)
