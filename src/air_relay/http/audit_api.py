"""``GET /v1/audit_log``: every delivery attempt of a tenant, newest first, keyset-paginated,
each with the seal that covers it; ``GET /v1/audit_seal/latest``: the newest seal of the
audit log's hash chain."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from air_relay.db import repository as repo
from air_relay.http.auth import api_key, query_tenant
from air_relay.http.params import (
    bad_cursor,
    cursor_text,
    int_param,
    keyset_page,
    optional,
    page_limit,
    parse_time,
    text_param,
    uuid_param,
)
from air_relay.http.state import POOL
from air_relay.model import FAILURE, SUCCESS, AuditEntry, AuditFilter, AuditSeal
from air_relay.timestamps import rfc3339
from air_relay.validation import InvalidArgument

OUTCOMES = (FAILURE, SUCCESS, "all")
BIGINT_MAX = 2**63 - 1


def decode_cursor(name: str, cursor: str) -> int:
    prefix, _, number = cursor_text(cursor).partition(":")
    try:
        last_id = int(number) if prefix == "a" and number.isdigit() else 0
    except ValueError as exc:  # digits int() refuses: other scripts', or thousands of them
        raise bad_cursor() from exc
    # Ids are positive bigints: anything else was not made here (and would not bind).
    if not 0 < last_id <= BIGINT_MAX:
        raise bad_cursor()
    return last_id


def parse_filter(q: Mapping[str, str], tenant_id: str) -> AuditFilter:
    outcome = q.get("outcome", "all")
    if outcome not in OUTCOMES:
        raise InvalidArgument("outcome", "must be failure, success or all")
    return AuditFilter(
        tenant_id=tenant_id,
        event_sink_id=optional(q, "event_sink_id", uuid_param),
        event_name=optional(q, "event_name", text_param),
        status_code=optional(q, "status_code", lambda n, v: int_param(n, v, 100, 599)),
        outcome=None if outcome == "all" else outcome,
        since=optional(q, "since", parse_time),
        until=optional(q, "until", parse_time),
        before_id=optional(q, "cursor", decode_cursor),
        limit=page_limit(q),
    )


def render_entry(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "timestamp": rfc3339(e.created_at),
        "tenant_id": e.tenant_id,
        "event_id": str(e.event_id),
        "event_name": e.event_name,
        "organization_id": e.organization_id,
        "event_sink_id": str(e.event_sink_id),
        "event_sink_type": e.event_sink_type,
        "attempt": e.attempt,
        "outcome": e.outcome,
        "status_code": e.status_code,
        "error": e.error,
        "error_detail": e.error_detail,
        "response_body": e.response_body,
        "duration_ms": e.duration_ms,
        "next_attempt_at": rfc3339(e.next_attempt_at),
        "seal_id": e.seal_id,
        "failed_over_to": str(e.failed_over_to) if e.failed_over_to else None,
        "failed_over_from": str(e.failed_over_from) if e.failed_over_from else None,
        # An attempt to send a storm digest: the digest, and how many deliveries it carried.
        "digest_id": str(e.digest_id) if e.digest_id else None,
        "digest_count": e.digest_count,
    }


async def audit_log(request: web.Request) -> web.Response:
    tenant_id = query_tenant(request, api_key(request))
    flt = parse_filter(request.query, tenant_id)
    # One row more than asked tells whether another page exists.
    rows = await repo.audit_log_page(
        request.app[POOL], dataclasses.replace(flt, limit=flt.limit + 1)
    )
    page, pagination = keyset_page(rows, flt.limit, lambda e: f"a:{e.id}")
    return web.json_response(
        {"data": {"audit_logs": [render_entry(e) for e in page]}, "pagination": pagination}
    )


def render_seal(seal: AuditSeal) -> dict[str, Any]:
    return {
        "id": seal.id,
        "sealed_at": rfc3339(seal.sealed_at),
        "hash": seal.hash,
        "prev_hash": seal.prev_hash,
        "first_id": seal.first_id,
        "last_id": seal.last_id,
        "row_count": seal.row_count,
    }


async def latest_seal(request: web.Request) -> web.Response:
    # Seals cover every tenant's rows at once, and say nothing about any row but its id:
    # any valid API key may read the newest one.
    api_key(request)
    seal = await repo.latest_audit_seal(request.app[POOL])
    return web.json_response({"data": {"audit_seal": render_seal(seal) if seal else None}})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/audit_log", audit_log)
    app.router.add_get("/v1/audit_seal/latest", latest_seal)
