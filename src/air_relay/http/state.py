"""Typed application state (aiohttp ``web.AppKey``s): what the handlers read from the app.

``http.app.make_app`` sets CONFIG; the runtime (``runtime.build_app``) puts the others in place
before the app serves.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from air_relay.config import Config
from air_relay.db.batcher import IngestBatcher
from air_relay.db.spool import Spool
from air_relay.delivery.dispatcher import Dispatcher
from air_relay.metrics import Metrics
from air_relay.sinks.egress_guard import Lookups
from air_relay.sinks.template_workers import TemplateWorkers

CONFIG = web.AppKey("config", Config)
POOL = web.AppKey("pool", asyncpg.Pool)
INGEST_BATCHER = web.AppKey("ingest_batcher", IngestBatcher)
METRICS = web.AppKey("metrics", Metrics)
# Name lookups for the egress guard at sink create/update (bounded, with a timeout).
LOOKUPS = web.AppKey("lookups", Lookups)
# Where custom Webhook templates are checked at sink create/update (and render at send).
TEMPLATES = web.AppKey("templates", TemplateWorkers)
# Present only when this process runs a dispatcher: ingest wakes it directly.
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
# Present only when the spool is enabled: where ingest puts events the database cannot take.
SPOOL = web.AppKey("spool", Spool)
