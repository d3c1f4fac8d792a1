"""Bearer-token checks: ingest tokens (token -> tenant) and management-API keys (key ->
tenants), both looked up in constant time, and the tenant rules of the API."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import TypeVar

from aiohttp import web

from air_relay.config import WILDCARD_TENANT, ApiKey, Config
from air_relay.http.errors import ApiError
from air_relay.http.state import CONFIG
from air_relay.validation import InvalidArgument, storable

T = TypeVar("T")


def constant_time_find(presented: str, candidates: Iterable[tuple[str, T]]) -> T | None:
    """The value paired with the secret equal to ``presented``, or None.

    Every candidate is compared, with no early exit, so the time taken says nothing about
    which secret matched or how much of one did.
    """
    found: T | None = None
    raw = presented.encode()
    for secret, value in candidates:
        if hmac.compare_digest(raw, secret.encode()) and found is None:
            found = value
    return found


def tenant_for_token(cfg: Config, token: str) -> str | None:
    """The tenant of an ingest token."""
    return constant_time_find(token, ((t.token, t.tenant_id) for t in cfg.ingest.tokens))


def api_key_for(cfg: Config, key: str) -> ApiKey | None:
    """The configured API key equal to ``key``."""
    return constant_time_find(key, ((k.key, k) for k in cfg.api.keys))


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
    tenant = tenant_for_token(request.app[CONFIG], token) if token else None
    if tenant is None:
        raise unauthorized()
    return tenant


def api_key(request: web.Request) -> ApiKey:
    token = bearer_token(request)
    key = api_key_for(request.app[CONFIG], token) if token else None
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
        raise InvalidArgument("tenant_id", "is required")
    if not storable(tenant_id):
        raise InvalidArgument("tenant_id", "contains characters no tenant has")
    require_tenant(key, tenant_id)
    return tenant_id


def key_fingerprint(key: ApiKey) -> str:
    """Names the key in records and logs without revealing it (12 hex digits of SHA-256)."""
    return hashlib.sha256(key.key.encode()).hexdigest()[:12]


def held_tenants(key: ApiKey) -> list[str] | None:
    """The tenants a key holds, for a SQL filter; None for a key that holds every tenant."""
    return None if WILDCARD_TENANT in key.tenant_ids else list(key.tenant_ids)
