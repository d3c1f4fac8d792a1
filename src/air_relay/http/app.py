"""The HTTP application: its routes, the error middleware and the configuration they read.

The resources the handlers use (pool, batcher, metrics, dispatcher) are put in place by the
runtime (``runtime.build_app``), which also owns their lifecycle.
"""

from __future__ import annotations

from aiohttp import web

from air_relay.config import Config
from air_relay.http import (
    audit_api,
    dead_letters,
    delivery_api,
    openapi,
    ops,
    sinks_api,
    status_api,
    status_page,
)
from air_relay.http.errors import error_middleware
from air_relay.http.ingest import handle_ingest
from air_relay.http.state import CONFIG


def make_app(cfg: Config) -> web.Application:
    app = web.Application(
        # It also tells the connection's guard (listener.py) when each request starts and ends.
        middlewares=[error_middleware],
        # A little headroom so an oversized body is answered by our own 413 check.
        client_max_size=cfg.server.max_body_bytes + 1,
    )
    app[CONFIG] = cfg
    app.router.add_post(cfg.ingest.path, handle_ingest)
    sinks_api.add_routes(app)
    audit_api.add_routes(app)
    delivery_api.add_routes(app)
    dead_letters.add_routes(app)
    status_api.add_routes(app)
    ops.add_routes(app)
    openapi.add_routes(app)
    status_page.add_routes(app)
    return app
