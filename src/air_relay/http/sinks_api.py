"""``/v1/event_sink``: the Scanner-compatible event sink API (create, list, get, update,
delete), and the sink object it answers with.

A key sees only its tenants: another tenant's sink is a 404 (its existence is not revealed),
a list or create naming a tenant the key does not hold is a 403. A tenant holds at most
``api.max_sinks_per_tenant`` sinks; the list is keyset-paginated like the audit log (with
the default limit, the first page of a tenant within the cap is the whole Scanner answer).
Argument rules live in ``sinks.args`` and ``sinks.registry``; this module only reads the
request and answers.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from aiohttp import web

from air_relay.config import ApiKey, Config
from air_relay.db import repository as repo
from air_relay.http.auth import api_key, query_tenant, require_tenant
from air_relay.http.errors import ApiError, unavailable
from air_relay.http.jsonbody import read_api_json
from air_relay.http.params import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    decode_time_id_cursor,
    keyset_page,
    optional,
    page_limit,
    parse_uuid,
    path_uuid,
    time_id_cursor,
)
from air_relay.http.sink_options import (
    FALLBACK,
    OPTION_FIELDS,
    check_fallback,
    fallback_gone,
    render_options,
    with_options,
)
from air_relay.http.state import CONFIG, LOOKUPS, POOL, TEMPLATES
from air_relay.model import Sink, SinkFields
from air_relay.sinks.args import (
    parse_active,
    parse_digest,
    parse_events,
    parse_organization_ids,
)
from air_relay.sinks.registry import (
    check_destination,
    check_template,
    parse_sink_args,
    shown_args,
)
from air_relay.sinks.template_workers import WorkersUnavailable
from air_relay.timestamps import rfc3339_seconds
from air_relay.validation import InvalidArgument, reject_unknown, required, text_field

log = structlog.get_logger(__name__)

_CREATE_FIELDS = (
    "tenant_id",
    "name",
    "description",
    "event_sink_args",
    "events",
    "organization_ids",
    "active",
    *OPTION_FIELDS,
    "digest",
)
_UPDATE_FIELDS = (*_CREATE_FIELDS, "id")
NO_SINK = "No event sink with that id."


def render_sink(sink: Sink) -> dict[str, Any]:
    """The Scanner event-sink object, plus the air-relay extensions."""
    return {
        "id": str(sink.id),
        "tenant_id": sink.tenant_id,
        "name": sink.name,
        "description": sink.description,
        "event_sink_type": sink.sink_type,
        "configuration": {sink.sink_type: shown_args(sink.sink_type, sink.args)},
        "events": sink.events,
        "organization_ids": sink.organization_ids,
        "active": sink.active,
        **render_options(sink),
        "digest": sink.digest,
        "created_at": rfc3339_seconds(sink.created_at),
        "updated_at": rfc3339_seconds(sink.updated_at),
    }


def _require_string(body: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    return text_field(required(body, name), name, allow_empty=allow_empty)


async def visible_sink(request: web.Request, key: ApiKey) -> Sink:
    """The sink of the path's ``{id}``; a 404 unless ``key`` holds its tenant."""
    sink = await repo.get_sink(request.app[POOL], path_uuid(request, NO_SINK))
    if sink is None or not key.allows(sink.tenant_id):
        raise ApiError(404, "not_found", NO_SINK)
    return sink


async def _check_args(request: web.Request, sink_type: str, args: dict[str, Any]) -> None:
    """The checks of new sink arguments that wait on something: the egress guard's name
    lookups, then a custom template's renders in the template workers."""
    cfg = request.app[CONFIG]
    await check_destination(sink_type, args, cfg, request.app[LOOKUPS])
    try:
        await check_template(sink_type, args, cfg, request.app[TEMPLATES])
    except WorkersUnavailable as exc:
        raise unavailable(
            f"The template cannot be checked right now ({exc}); retry shortly."
        ) from exc


async def _new_fields(request: web.Request, body: dict[str, Any], key: ApiKey) -> SinkFields:
    cfg = request.app[CONFIG]
    reject_unknown(body, _CREATE_FIELDS)
    tenant_id = _require_string(body, "tenant_id")
    require_tenant(key, tenant_id)
    if "event_sink_args" not in body:
        raise InvalidArgument("event_sink_args", "is required")
    sink_type, args = parse_sink_args(body["event_sink_args"], cfg)
    await _check_args(request, sink_type, args)
    fields = SinkFields(
        tenant_id=tenant_id,
        name=_require_string(body, "name"),
        description=_require_string(body, "description", allow_empty=True),
        sink_type=sink_type,
        args=args,
        events=parse_events(body.get("events")),
        organization_ids=parse_organization_ids(body.get("organization_ids")),
        active=parse_active(body.get("active", True)),
        digest=parse_digest(body.get("digest")),
    )
    fields = with_options(fields, body)
    await check_fallback(request.app[POOL], fields)
    return fields


def _updated_fields(body: dict[str, Any], sink: Sink, cfg: Config) -> SinkFields:
    """The sink's fields with the update applied: only what the body names changes."""
    reject_unknown(body, _UPDATE_FIELDS)
    if "id" in body and parse_uuid(body["id"]) != sink.id:
        raise InvalidArgument("id", "does not match the id in the path")
    if "tenant_id" in body and body["tenant_id"] != sink.tenant_id:
        raise InvalidArgument("tenant_id", "cannot be changed")
    sink_type, args = sink.sink_type, sink.args
    if "event_sink_args" in body:
        sink_type, args = parse_sink_args(body["event_sink_args"], cfg, sink)
    fields = SinkFields(
        tenant_id=sink.tenant_id,
        name=_require_string(body, "name") if "name" in body else sink.name,
        description=_require_string(body, "description", allow_empty=True)
        if "description" in body
        else sink.description,
        sink_type=sink_type,
        args=args,
        events=parse_events(body["events"]) if "events" in body else sink.events,
        organization_ids=parse_organization_ids(body["organization_ids"])
        if "organization_ids" in body
        else sink.organization_ids,
        active=parse_active(body["active"]) if "active" in body else sink.active,
        digest=parse_digest(body["digest"]) if "digest" in body else sink.digest,
    )
    return with_options(fields, body, sink)


async def create_sink(request: web.Request) -> web.Response:
    key = api_key(request)
    body = await read_api_json(request)
    fields = await _new_fields(request, body, key)
    most = request.app[CONFIG].api.max_sinks_per_tenant
    with fallback_gone(fields):
        sink = await repo.insert_sink(request.app[POOL], uuid.uuid4(), fields, most)
    if sink is None:
        raise ApiError(
            409,
            "limit_exceeded",
            f"Tenant {fields.tenant_id} already has {most} event sinks, the most "
            "api.max_sinks_per_tenant allows; delete one first.",
        )
    log.info(
        "sink_created",
        event_sink_id=str(sink.id),
        tenant_id=sink.tenant_id,
        sink_type=sink.sink_type,
    )
    return web.json_response({"event_sink": render_sink(sink)})


async def list_sinks(request: web.Request) -> web.Response:
    tenant_id = query_tenant(request, api_key(request))
    # Scanner clients read one page: by default it holds every sink a tenant may have.
    cap = request.app[CONFIG].api.max_sinks_per_tenant
    limit = page_limit(request.query, default=min(MAX_LIMIT, max(DEFAULT_LIMIT, cap)))
    after = optional(request.query, "cursor", decode_time_id_cursor)
    # The cursor is only a position: the query is filtered by the tenant checked above.
    rows = await repo.list_sinks(request.app[POOL], tenant_id, limit + 1, after)
    page, pagination = keyset_page(rows, limit, lambda s: time_id_cursor(s.created_at, s.id))
    return web.json_response(
        {"data": {"event_sinks": [render_sink(s) for s in page]}, "pagination": pagination}
    )


async def get_sink(request: web.Request) -> web.Response:
    sink = await visible_sink(request, api_key(request))
    return web.json_response({"event_sink": render_sink(sink)})


async def update_sink(request: web.Request) -> web.Response:
    sink = await visible_sink(request, api_key(request))
    body = await read_api_json(request)
    cfg = request.app[CONFIG]
    fields = _updated_fields(body, sink, cfg)
    if FALLBACK in body:
        await check_fallback(request.app[POOL], fields, sink.id)
    if "event_sink_args" in body:
        await _check_args(request, fields.sink_type, fields.args)
    with fallback_gone(fields):
        updated = await repo.update_sink(request.app[POOL], sink.id, fields)
    if updated is None:
        raise ApiError(404, "not_found", NO_SINK)
    log.info("sink_updated", event_sink_id=str(sink.id), tenant_id=sink.tenant_id)
    return web.json_response({"event_sink": render_sink(updated)})


async def delete_sink(request: web.Request) -> web.Response:
    sink = await visible_sink(request, api_key(request))
    deleted, dependents = await repo.delete_sink_unless_fallback(request.app[POOL], sink.id)
    if dependents:
        named = ", ".join(f"{name} ({dep_id})" for dep_id, name in dependents)
        raise ApiError(
            409,
            "sink_in_use",
            f"Event sink {named} names this sink as fallback_event_sink_id; "
            "change or delete it first.",
        )
    if not deleted:
        raise ApiError(404, "not_found", NO_SINK)
    log.info("sink_deleted", event_sink_id=str(sink.id), tenant_id=sink.tenant_id)
    return web.json_response({"id": str(sink.id), "tenant_id": sink.tenant_id})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/event_sink", create_sink)
    app.router.add_get("/v1/event_sink", list_sinks)
    app.router.add_get("/v1/event_sink/{id}", get_sink)
    app.router.add_put("/v1/event_sink/{id}", update_sink)
    app.router.add_delete("/v1/event_sink/{id}", delete_sink)
