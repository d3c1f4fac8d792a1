"""``/v1/event_sink``: the Scanner-compatible event sink API (SPEC 3.2).

A key sees only its tenants: another tenant's sink is a 404 (its existence is not revealed),
a list or create naming a tenant the key does not hold is a 403.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from aiohttp import web

from air_relay.config import ApiKey
from air_relay.db import repository as repo
from air_relay.http.auth import api_key, query_tenant, require_tenant
from air_relay.http.errors import ApiError
from air_relay.http.jsonbody import read_api_json
from air_relay.http.params import path_uuid
from air_relay.http.state import CONFIG, POOL
from air_relay.sinks.args import (
    InvalidArgument,
    parse_active,
    parse_events,
    parse_organization_ids,
    parse_sink_args,
    render_sink,
    text_field,
)
from air_relay.sinks.egress_guard import DestinationRefused, check_url

log = structlog.get_logger(__name__)

_CREATE_FIELDS = {
    "tenant_id",
    "name",
    "description",
    "event_sink_args",
    "events",
    "organization_ids",
    "active",
}
_UPDATE_FIELDS = _CREATE_FIELDS | {"id"}


def bad_argument(exc: InvalidArgument) -> ApiError:
    return ApiError(400, "invalid_argument", f"{exc.field} {exc.message}.")


def _require_string(body: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    if body.get(name) is None:
        raise InvalidArgument(name, "is required")
    return text_field(body[name], name, allow_empty=allow_empty)


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise InvalidArgument(name, "is not a known field")


def _parse_uuid(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


NO_SINK = "No event sink with that id."


async def visible_sink(request: web.Request, key: ApiKey) -> repo.Sink:
    """The sink of the path's ``{id}``; a 404 unless ``key`` holds its tenant."""
    sink = await repo.get_sink(request.app[POOL], path_uuid(request, NO_SINK))
    if sink is None or not key.allows(sink.tenant_id):
        raise ApiError(404, "not_found", NO_SINK)
    return sink


async def _check_destination(request: web.Request, sink_type: str, args: dict[str, Any]) -> None:
    """The SSRF guard at create/update; the senders check again at every send."""
    if sink_type != "Webhook" or request.app[CONFIG].delivery.allow_private_destinations:
        return
    try:
        await check_url(args["url"])
    except DestinationRefused as exc:
        raise InvalidArgument(
            "event_sink_args.Webhook.url",
            f"points to a {exc.reason} address, which is not allowed "
            "(delivery.allow_private_destinations is false)",
        ) from exc


async def create_sink(request: web.Request) -> web.Response:
    key = api_key(request)
    body = await read_api_json(request)
    try:
        _check_fields(body, _CREATE_FIELDS)
        tenant_id = _require_string(body, "tenant_id")
        require_tenant(key, tenant_id)
        if "event_sink_args" not in body:
            raise InvalidArgument("event_sink_args", "is required")
        sink_type, args = parse_sink_args(body["event_sink_args"], request.app[CONFIG])
        await _check_destination(request, sink_type, args)
        fields = repo.SinkFields(
            tenant_id=tenant_id,
            name=_require_string(body, "name"),
            description=_require_string(body, "description", allow_empty=True),
            sink_type=sink_type,
            args=args,
            events=parse_events(body.get("events")),
            organization_ids=parse_organization_ids(body.get("organization_ids")),
            active=parse_active(body.get("active", True)),
        )
    except InvalidArgument as exc:
        raise bad_argument(exc) from exc
    sink = await repo.insert_sink(request.app[POOL], uuid.uuid4(), fields)
    log.info("sink_created", event_sink_id=str(sink.id), tenant_id=tenant_id, sink_type=sink_type)
    return web.json_response({"event_sink": render_sink(sink)})


async def list_sinks(request: web.Request) -> web.Response:
    tenant_id = query_tenant(request, api_key(request))
    sinks = await repo.list_sinks(request.app[POOL], tenant_id)
    return web.json_response(
        {"data": {"event_sinks": [render_sink(s) for s in sinks]}, "pagination": None}
    )


async def get_sink(request: web.Request) -> web.Response:
    key = api_key(request)
    sink = await visible_sink(request, key)
    return web.json_response({"event_sink": render_sink(sink)})


def _updated_fields(body: dict[str, Any], sink: repo.Sink, request: web.Request) -> repo.SinkFields:
    _check_fields(body, _UPDATE_FIELDS)
    if "id" in body and _parse_uuid(body["id"]) != sink.id:
        raise InvalidArgument("id", "does not match the id in the path")
    if "tenant_id" in body and body["tenant_id"] != sink.tenant_id:
        raise InvalidArgument("tenant_id", "cannot be changed")
    sink_type, args = sink.sink_type, sink.args
    if "event_sink_args" in body:
        sink_type, args = parse_sink_args(body["event_sink_args"], request.app[CONFIG], sink)
    return repo.SinkFields(
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
    )


async def update_sink(request: web.Request) -> web.Response:
    key = api_key(request)
    sink = await visible_sink(request, key)
    body = await read_api_json(request)
    try:
        fields = _updated_fields(body, sink, request)
        if "event_sink_args" in body:
            await _check_destination(request, fields.sink_type, fields.args)
    except InvalidArgument as exc:
        raise bad_argument(exc) from exc
    updated = await repo.update_sink(request.app[POOL], sink.id, fields)
    if updated is None:
        raise ApiError(404, "not_found", NO_SINK)
    log.info("sink_updated", event_sink_id=str(sink.id), tenant_id=sink.tenant_id)
    return web.json_response({"event_sink": render_sink(updated)})


async def delete_sink(request: web.Request) -> web.Response:
    key = api_key(request)
    sink = await visible_sink(request, key)
    if not await repo.delete_sink(request.app[POOL], sink.id):
        raise ApiError(404, "not_found", NO_SINK)
    log.info("sink_deleted", event_sink_id=str(sink.id), tenant_id=sink.tenant_id)
    return web.json_response({"id": str(sink.id), "tenant_id": sink.tenant_id})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/event_sink", create_sink)
    app.router.add_get("/v1/event_sink", list_sinks)
    app.router.add_get("/v1/event_sink/{id}", get_sink)
    app.router.add_put("/v1/event_sink/{id}", update_sink)
    app.router.add_delete("/v1/event_sink/{id}", delete_sink)
