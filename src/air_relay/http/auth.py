"""Bearer-token checks for ingest (tokens -> tenant) and the management API (keys -> tenants)."""

from __future__ import annotations

import hashlib

from aiohttp import web

from air_relay.config import WILDCARD_TENANT, ApiKey
from air_relay.db.repository import storable
from air_relay.http.errors import ApiError
from air_relay.http.state import CONFIG


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def unauthorized(message: str = "A valid Bearer token is required.") -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def ingest_tenant(request: web.Request) -> str:
    token = bearer_token(request)
    tenant = request.app[CONFIG].tenant_for_token(token) if token else None
    if tenant is None:
        raise unauthorized()
    return tenant


def api_key(request: web.Request) -> ApiKey:
    token = bearer_token(request)
    key = request.app[CONFIG].api_key(token) if token else None
    if key is None:
        raise unauthorized()
    return key


def require_tenant(key: ApiKey, tenant_id: str) -> None:
    if not key.allows(tenant_id):
        raise ApiError(403, "forbidden", "This API key does not grant access to that tenant.")


def query_tenant(request: web.Request, key: ApiKey) -> str:
    """The ``?tenant_id=`` of a list or audit query: required, and held by ``key``."""
    tenant_id = request.query.get("tenant_id", "")
    if not tenant_id.strip():
        raise ApiError(400, "invalid_argument", "tenant_id is required.")
    if not storable(tenant_id):
        raise ApiError(400, "invalid_argument", "tenant_id contains characters no tenant has.")
    require_tenant(key, tenant_id)
    return tenant_id


def key_fingerprint(key: ApiKey) -> str:
    """Names the key in records and logs without revealing it (12 hex digits of SHA-256)."""
    return hashlib.sha256(key.key.encode()).hexdigest()[:12]


def held_tenants(key: ApiKey) -> list[str] | None:
    """The tenants a key holds, for a SQL filter; None for a key that holds every tenant."""
    return None if WILDCARD_TENANT in key.tenant_ids else list(key.tenant_ids)
