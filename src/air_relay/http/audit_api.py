"""``GET /v1/audit_log``: every delivery attempt, newest first, keyset-paginated (SPEC 3.3)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from air_relay.db import repository as repo
from air_relay.db.repository import storable
from air_relay.http.auth import api_key, query_tenant
from air_relay.http.errors import ApiError
from air_relay.http.keys import POOL
from air_relay.timestamps import rfc3339

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
OUTCOMES = ("failure", "success", "all")
BIGINT_MAX = 2**63 - 1
_SPACE_OFFSET = re.compile(r"(?<=\d) (\d{2}:\d{2})$")


def _bad(name: str, message: str) -> ApiError:
    return ApiError(400, "invalid_argument", f"{name} {message}.")


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
        raise _bad("cursor", "is not a cursor this API returned") from exc


def parse_time(name: str, value: str) -> datetime:
    # An unencoded "+" in a query string arrives as a space: "...T12:00:00 02:00".
    value = _SPACE_OFFSET.sub(r"+\1", value)
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise _bad(name, "must be an RFC 3339 timestamp, e.g. 2025-01-28T12:00:00Z") from exc
    if parsed.tzinfo is None:
        raise _bad(name, "must carry a time zone (Z or +hh:mm)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:
        raise _bad(name, "is out of range") from exc


def _int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise _bad(name, "must be an integer") from exc
    if not low <= number <= high:
        raise _bad(name, f"must be between {low} and {high}")
    return number


def parse_filter(query: Any, tenant_id: str) -> repo.AuditFilter:
    q = query
    sink_id = None
    if q.get("event_sink_id"):
        try:
            sink_id = uuid.UUID(q["event_sink_id"])
        except ValueError as exc:
            raise _bad("event_sink_id", "must be a UUID") from exc
    outcome = q.get("outcome", "all")
    if outcome not in OUTCOMES:
        raise _bad("outcome", "must be failure, success or all")
    return repo.AuditFilter(
        tenant_id=tenant_id,
        event_sink_id=sink_id,
        event_name=q.get("event_name") or None,
        status_code=_int_param("status_code", q["status_code"], 100, 599)
        if q.get("status_code")
        else None,
        outcome=None if outcome == "all" else outcome,
        since=parse_time("since", q["since"]) if q.get("since") else None,
        until=parse_time("until", q["until"]) if q.get("until") else None,
        before_id=decode_cursor(q["cursor"]) if q.get("cursor") else None,
        limit=_int_param("limit", q["limit"], 1, MAX_LIMIT) if q.get("limit") else DEFAULT_LIMIT,
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
        raise _bad("event_name", "contains NUL characters or unpaired surrogates")
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
