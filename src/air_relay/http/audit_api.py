"""``GET /v1/audit_log``: every delivery attempt, newest first, keyset-paginated (SPEC 3.3)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from air_relay.db import repository as repo
from air_relay.db.repository import storable
from air_relay.http.auth import api_key, query_tenant
from air_relay.http.keys import POOL
from air_relay.http.params import bad_param, int_param, parse_time
from air_relay.timestamps import rfc3339

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
OUTCOMES = ("failure", "success", "all")
BIGINT_MAX = 2**63 - 1


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"a:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "a" or not number.isdigit():
            raise ValueError(cursor)
        last_id = int(number)
        # Ids are positive bigints: anything else was not made here (and would not bind).
        if not 0 < last_id <= BIGINT_MAX:
            raise ValueError(cursor)
        return last_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise bad_param("cursor", "is not a cursor this API returned") from exc


def parse_filter(query: Any, tenant_id: str) -> repo.AuditFilter:
    q = query
    sink_id = None
    if q.get("event_sink_id"):
        try:
            sink_id = uuid.UUID(q["event_sink_id"])
        except ValueError as exc:
            raise bad_param("event_sink_id", "must be a UUID") from exc
    outcome = q.get("outcome", "all")
    if outcome not in OUTCOMES:
        raise bad_param("outcome", "must be failure, success or all")
    return repo.AuditFilter(
        tenant_id=tenant_id,
        event_sink_id=sink_id,
        event_name=q.get("event_name") or None,
        status_code=int_param("status_code", q["status_code"], 100, 599)
        if q.get("status_code")
        else None,
        outcome=None if outcome == "all" else outcome,
        since=parse_time("since", q["since"]) if q.get("since") else None,
        until=parse_time("until", q["until"]) if q.get("until") else None,
        before_id=decode_cursor(q["cursor"]) if q.get("cursor") else None,
        limit=int_param("limit", q["limit"], 1, MAX_LIMIT) if q.get("limit") else DEFAULT_LIMIT,
    )


def render_entry(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": r["id"],
        "timestamp": rfc3339(r["created_at"]),
        "tenant_id": r["tenant_id"],
        "event_id": str(r["event_id"]),
        "event_name": r["event_name"],
        "organization_id": r["organization_id"],
        "event_sink_id": str(r["event_sink_id"]),
        "event_sink_type": r["event_sink_type"],
        "attempt": r["attempt"],
        "outcome": r["outcome"],
        "status_code": r["status_code"],
        "error": r["error"],
        "response_body": r["response_body"],
        "duration_ms": r["duration_ms"],
        "next_attempt_at": rfc3339(r["next_attempt_at"]),
    }


async def audit_log(request: web.Request) -> web.Response:
    tenant_id = query_tenant(request, api_key(request))
    if not storable(request.query.get("event_name", "")):
        raise bad_param("event_name", "contains NUL characters or unpaired surrogates")
    flt = parse_filter(request.query, tenant_id)
    # One row more than asked tells whether another page exists.
    rows = await repo.audit_log_page(
        request.app[POOL], dataclasses.replace(flt, limit=flt.limit + 1)
    )
    page = rows[: flt.limit]
    pagination = {"next_cursor": encode_cursor(page[-1]["id"])} if len(rows) > flt.limit else None
    return web.json_response(
        {"data": {"audit_logs": [render_entry(r) for r in page]}, "pagination": pagination}
    )
