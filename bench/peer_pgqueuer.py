"""The peer: the same job as air-relay done with pgqueuer and aiohttp, in one process.

A pgqueuer consumer (batch size 100, as in the reference the speed issue measured) whose one
entrypoint POSTs a job's payload to the Webhook URL with one aiohttp ClientSession (a non-2xx
answer fails the job), and an aiohttp ingest handler that parses the JSON, enqueues it (one
durable INSERT per request, pgqueuer's own enqueue) and answers 202. pgqueuer's tables are
installed with its defaults (logged, "durable"). Bench-only: pgqueuer is in the ``bench``
extra, never a runtime dependency.

    .venv/bin/python -m bench.peer_pgqueuer --dsn postgresql://... --port 9002 \
        --url http://127.0.0.1:9000/hook/peer [--no-consume] [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Sequence
from datetime import timedelta

import aiohttp
import asyncpg
from aiohttp import web
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

from bench.receiver import run

ENTRYPOINT = "deliver"
QUEUE_TABLE = "pgqueuer"  # pgqueuer's default name; a finished job leaves it


async def install(dsn: str) -> None:
    """pgqueuer's schema in the (empty) database ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        await Queries.from_asyncpg_connection(conn).install()
    finally:
        await conn.close()


async def enqueue(conn: asyncpg.Connection, payloads: Sequence[bytes]) -> None:
    """Enqueue one job per payload in one statement (pgqueuer's batch enqueue)."""
    queries = Queries.from_asyncpg_connection(conn)
    await queries.enqueue([ENTRYPOINT] * len(payloads), list(payloads), [0] * len(payloads))


async def queued(conn: asyncpg.Connection) -> int:
    """Jobs not finished yet (queued or picked)."""
    count: int = await conn.fetchval(f"SELECT count(*) FROM {QUEUE_TABLE}")
    return count


def consumer(conn: asyncpg.Connection, http: aiohttp.ClientSession, url: str) -> QueueManager:
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    headers = {"Content-Type": "application/json"}

    @qm.entrypoint(ENTRYPOINT)
    async def deliver(job: Job) -> None:
        async with http.post(url, data=job.payload, headers=headers) as resp:
            await resp.read()
            resp.raise_for_status()

    return qm


async def wait_listening(qm: QueueManager, task: asyncio.Task[None]) -> None:
    """Until the consumer's LISTEN answers a round trip (so no NOTIFY is missed)."""
    for _ in range(100):
        if task.done():
            task.result()
        with contextlib.suppress(Exception):
            await qm.listener_healthy(timeout=timedelta(seconds=1))
            return
        await asyncio.sleep(0.1)
    raise SystemExit("the pgqueuer consumer did not start listening")


def ingest_app(pool: asyncpg.Pool) -> web.Application:
    queries = Queries.from_asyncpg_pool(pool)

    async def ingest(request: web.Request) -> web.Response:
        body = await request.read()
        event = json.loads(body)
        if not isinstance(event, dict):
            return web.json_response({"error": "not an object"}, status=422)
        job_ids = await queries.enqueue(ENTRYPOINT, body)
        return web.json_response({"job_id": job_ids[0]}, status=202)

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ready")

    app = web.Application()
    app.router.add_post("/v1/air/events", ingest)
    app.router.add_get("/ready", ready)
    return app


async def serve(args: argparse.Namespace) -> None:
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=10)
    conn = await asyncpg.connect(args.dsn)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    task: asyncio.Task[None] | None = None
    runner = web.AppRunner(ingest_app(pool), access_log=None)
    try:
        if args.consume:
            qm = consumer(conn, http, args.url)
            task = asyncio.create_task(
                qm.run(batch_size=args.batch_size, dequeue_timeout=timedelta(seconds=1))
            )
            await wait_listening(qm, task)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        print(f"peer listening on 127.0.0.1:{args.port}", flush=True)
        await (task if task is not None else asyncio.Event().wait())
    finally:
        await runner.cleanup()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await http.close()
        await conn.close()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--url", required=True, help="where each job's payload is POSTed")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--no-consume", dest="consume", action="store_false")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args), args.loop)


if __name__ == "__main__":
    main()
