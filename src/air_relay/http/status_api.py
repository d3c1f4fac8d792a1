"""Sink health in the API: ``GET /v1/event_sink/{id}/health`` (one sink) and
``GET /v1/status?tenant_id=`` (every sink of a tenant, with the tenant's totals).

The same keys and tenant rules as the sink API: another tenant's sink is a 404, a status
query for a tenant the key does not hold a 403. Both answers are one statement over the state
kept as attempts complete (``db/health.py``), never a scan of the audit log.
"""

from __future__ import annotations

from aiohttp import web

from air_relay.db.health import sinks_health, tenant_totals
from air_relay.http.auth import api_key, held_tenants, query_tenant
from air_relay.http.errors import ApiError
from air_relay.http.params import path_uuid
from air_relay.http.sinks_api import NO_SINK
from air_relay.http.state import POOL


async def sink_health(request: web.Request) -> web.Response:
    key = api_key(request)
    sink_id = path_uuid(request, NO_SINK)
    # Filtered by the key's tenants in SQL: a sink of another tenant is simply not found.
    rows = await sinks_health(request.app[POOL], held_tenants(key), sink_id)
    if not rows:
        raise ApiError(404, "not_found", NO_SINK)
    return web.json_response(rows[0].as_json())


async def tenant_status(request: web.Request) -> web.Response:
    tenant_id = query_tenant(request, api_key(request))
    rows = await sinks_health(request.app[POOL], [tenant_id])
    sinks = [{**r.as_json(), "name": r.name, "event_sink_type": r.type} for r in rows]
    return web.json_response(
        {"tenant_id": tenant_id, "sinks": sinks, "totals": tenant_totals(rows)}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/event_sink/{id}/health", sink_health)
    app.router.add_get("/v1/status", tenant_status)
