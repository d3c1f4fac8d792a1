"""Typed application state (``web.AppKey``), shared by every handler."""

from __future__ import annotations

import aiohttp
import asyncpg
from aiohttp import web

from air_relay.config import Config
from air_relay.db.batcher import IngestBatcher
from air_relay.delivery.dispatcher import Dispatcher
from air_relay.metrics import Metrics

CONFIG = web.AppKey("config", Config)
DSN = web.AppKey("dsn", str)
POOL = web.AppKey("pool", asyncpg.Pool)
INGEST_BATCHER = web.AppKey("ingest_batcher", IngestBatcher)
METRICS = web.AppKey("metrics", Metrics)
CLIENT_SESSION = web.AppKey("client_session", aiohttp.ClientSession)
WEBHOOK_SESSION = web.AppKey("webhook_session", aiohttp.ClientSession)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
