"""The status page: ``GET /status`` (HTML, no script), its stylesheet, and the sign-in and
sign-out that give a browser a session cookie for one API key (``http/sessions.py``).

``GET /status`` also takes the API's ``Authorization: Bearer`` header, for a script or curl.
Every response carries a Content-Security-Policy that allows no script at all, no framing and
no form target but the relay itself, and is never cached. The two POSTs are protected from
cross-site requests by the cookie's ``SameSite=Strict`` and by an Origin check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import structlog
from aiohttp import web

from air_relay import __version__
from air_relay.config import WILDCARD_TENANT, ApiKey
from air_relay.db.health import sinks_health
from air_relay.db.migrate import current_version
from air_relay.db.pool import DB_UNAVAILABLE
from air_relay.http.auth import api_key_for, bearer_token, held_tenants, key_fingerprint
from air_relay.http.sessions import COOKIE_NAME, COOKIE_PATH, Sessions
from air_relay.http.state import CONFIG, DISPATCHER, POOL, SPOOL
from air_relay.http.status_html import (
    SIGN_IN_PATH,
    SIGN_OUT_PATH,
    STYLE,
    STYLE_PATH,
    RelayState,
    SpoolState,
    message_page,
    sign_in_page,
    status_page,
)
from air_relay.model import SinkHealth

log = structlog.get_logger(__name__)

STATUS_PATH = "/status"
SESSIONS = web.AppKey("status_sessions", Sessions)
STARTED = web.AppKey("status_started", float)

# No script of any kind, the stylesheet from the relay only, forms posting only to the relay,
# and no framing (clickjacking).
CSP = (
    "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# How long the page waits for the database before showing it as unreachable.
_DB_TIMEOUT = 2.0


def _html(body: str, status: int = 200) -> web.Response:
    headers = SECURITY_HEADERS
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=headers
    )


def _redirect_to_page() -> web.Response:
    # 303: the browser follows with a GET, so a reload does not repeat the POST.
    return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": STATUS_PATH})


def same_origin(request: web.Request) -> bool:
    """Whether a POST comes from the relay's own pages.

    An ``Origin`` naming a host must name this one (the scheme is not compared, so a
    TLS-terminating proxy in front does not break sign-in). The page's ``no-referrer`` policy
    makes browsers send ``Origin: null`` on its own form posts; then ``Sec-Fetch-Site`` (sent
    by every current browser) must say same-origin. A client sending neither header is not a
    browser, and holds no cookie that a forged request could ride on.
    """
    origin = request.headers.get("Origin")
    site = request.headers.get("Sec-Fetch-Site")
    if origin is not None and origin != "null":
        netloc = urlsplit(origin).netloc
        return bool(netloc) and netloc.lower() == request.host.lower() and site != "cross-site"
    if origin == "null":
        return site == "same-origin"
    return site in (None, "same-origin", "none")


def _cross_site() -> web.Response:
    page = message_page("Request refused", "That form was not sent from this relay's page.")
    return _html(page, status=403)


def _session_key(request: web.Request) -> ApiKey | None:
    """The API key behind the request: its session cookie, else its Bearer header."""
    session = request.app[SESSIONS].verify(request.cookies.get(COOKIE_NAME))
    if session is not None:
        return session.key
    token = bearer_token(request)
    return api_key_for(request.app[CONFIG], token) if token else None


async def _read_database(
    request: web.Request, key: ApiKey
) -> tuple[int | None, Sequence[SinkHealth] | None]:
    """The schema version and the key's sinks; (None, None) when the database is down."""
    pool = request.app[POOL]
    try:
        async with pool.acquire(timeout=_DB_TIMEOUT) as conn:
            version = await asyncio.wait_for(current_version(conn), timeout=_DB_TIMEOUT)
        # One statement (db/health.py): as cheap with millions of attempts as with none.
        rows = await asyncio.wait_for(sinks_health(pool, held_tenants(key)), timeout=_DB_TIMEOUT)
    except DB_UNAVAILABLE as exc:
        log.warning("database_unavailable", path=request.path, error=type(exc).__name__)
        return None, None
    return version, rows


def _relay_state(request: web.Request, schema_version: int | None) -> RelayState:
    spool = request.app.get(SPOOL)
    return RelayState(
        version=__version__,
        uptime_seconds=time.monotonic() - request.app[STARTED],
        database_reachable=schema_version is not None,
        schema_version=schema_version,
        spool=None
        if spool is None
        else SpoolState(spool.spooling, spool.events, spool.size, spool.max_bytes),
        dispatcher=DISPATCHER in request.app,
        now=datetime.now(UTC),
    )


async def page(request: web.Request) -> web.Response:
    key = _session_key(request)
    if key is None:
        return _html(sign_in_page(), status=401)
    version, rows = await _read_database(request, key)
    tenants = "all" if WILDCARD_TENANT in key.tenant_ids else ", ".join(key.tenant_ids)
    return _html(status_page(_relay_state(request, version), rows, tenants))


async def style(_request: web.Request) -> web.Response:
    return web.Response(
        text=STYLE, content_type="text/css", charset="utf-8", headers=SECURITY_HEADERS
    )


async def _form_key(request: web.Request) -> str:
    """The ``api_key`` field of the sign-in form, or "" for anything else.

    Parsed here rather than by ``request.post()``, which raises on a malformed multipart body,
    an unknown charset or bytes that are not UTF-8: any of those is just no key (a 401 with
    the form), never a 500. The page is UTF-8, so its form is too.
    """
    if request.content_type != "application/x-www-form-urlencoded":
        return ""
    raw = await request.read()
    try:
        fields = parse_qs(raw.decode("utf-8"), max_num_fields=16, errors="strict")
    except ValueError:  # UnicodeDecodeError included; also too many fields
        return ""
    return (fields.get("api_key") or [""])[0].strip()


async def sign_in(request: web.Request) -> web.Response:
    if not same_origin(request):
        return _cross_site()
    text = await _form_key(request)
    key = api_key_for(request.app[CONFIG], text) if text else None
    if key is None:
        log.info("status_sign_in_refused", remote=request.remote)
        return _html(sign_in_page("That API key is not valid."), status=401)
    sessions = request.app[SESSIONS]
    resp = _redirect_to_page()
    resp.set_cookie(
        COOKIE_NAME,
        sessions.issue(key),
        max_age=sessions.lifetime_seconds,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    log.info("status_signed_in", key=key_fingerprint(key), remote=request.remote)
    return resp


async def sign_out(request: web.Request) -> web.Response:
    if not same_origin(request):
        return _cross_site()
    sessions = request.app[SESSIONS]
    session = sessions.verify(request.cookies.get(COOKIE_NAME))
    if session is not None:
        sessions.revoke(session)
        log.info("status_signed_out", key=key_fingerprint(session.key), remote=request.remote)
    resp = _redirect_to_page()
    resp.del_cookie(
        COOKIE_NAME, path=COOKIE_PATH, secure=request.secure, httponly=True, samesite="Strict"
    )
    return resp


def add_routes(app: web.Application) -> None:
    cfg = app[CONFIG]
    app[SESSIONS] = Sessions(cfg.api.keys, cfg.api.session_hours * 3600)
    app[STARTED] = time.monotonic()
    app.router.add_get(STATUS_PATH, page)
    app.router.add_get(STYLE_PATH, style)
    app.router.add_post(SIGN_IN_PATH, sign_in)
    app.router.add_post(SIGN_OUT_PATH, sign_out)
