"""The cost of recording completions (``repository.complete_deliveries``): the statement the
dispatcher runs for every batch of finished claims, which also keeps the sinks' health.

A private PostgreSQL (as bench/compare.py starts one), a fresh migrated database, ``--sinks``
Webhook sinks and ``--events`` events routed to all of them; then claims of ``--batch``
deliveries are completed, one statement per batch, and only that statement is timed. Each
batch: one in five claims fails once and goes back to pending (a failed attempt), the others
succeed (one attempt, delivered), so the health upkeep sees both outcomes.

    .venv/bin/python -m bench.completions --events 20000 --batch 64

``--reference FILE`` (a ``queries.sql`` of another commit, e.g. the one before the health
upkeep: ``git show 6a908ce~1:src/air_relay/db/queries.sql > /tmp/before.sql``) alternates
batches between that file's ``complete_deliveries`` and the current one on the same database,
so that both see the same load and table sizes, and prints both::

    .venv/bin/python -m bench.completions --reference /tmp/before.sql
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from air_relay import model
from air_relay.db import repository as repo
from air_relay.db.migrate import apply_migrations, latest_version
from air_relay.db.pool import connect, create_pool
from air_relay.db.queries import QUERIES
from tests.fault.postgres import PgServer
from tests.support import with_database


def _completion(d: model.ClaimedDelivery, n: int) -> model.Completion:
    now = datetime.now(UTC)
    if n % 5 == 0:
        failed = model.AttemptRecord(1, model.FAILURE, 503, "http_503", "busy", 4, now, now)
        return model.Completion(d, model.PENDING, now, "http_503", [failed])
    ok = model.AttemptRecord(1, model.SUCCESS, 200, None, "ok", 4, None, now)
    return model.Completion(d, model.DELIVERED, None, None, [ok])


def _statement(path: Path) -> str:
    """The ``complete_deliveries`` block of a queries.sql file."""
    text = path.read_text()
    start = text.index("-- name: complete_deliveries")
    block = text[start:].split("\n-- name: ", 1)[0]
    return block.split("\n", 1)[1].strip()


async def run(dsn: str, args: argparse.Namespace) -> dict[str, list[float]]:
    conn = await connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    pool = await create_pool(dsn, 1, 4)
    try:
        for i in range(args.sinks):
            fields = model.SinkFields(
                "bench", f"s{i}", "", "Webhook", {"url": "http://127.0.0.1:9/"}, None, None, True
            )
            await repo.insert_sink(pool, uuid.uuid4(), fields, max_per_tenant=1000)
        events = [model.NewEvent(uuid.uuid4(), "bench", "E", 1, b"{}") for _ in range(args.events)]
        for start in range(0, len(events), 500):
            await repo.ingest_events(pool, events[start : start + 500], timeout=30)
        await pool.execute("ANALYZE")
        statements = {"current": QUERIES["complete_deliveries"]}
        if args.reference:
            statements["reference"] = _statement(args.reference)
        timings: dict[str, list[float]] = {name: [] for name in statements}
        names = list(statements)
        n = 0
        while True:
            claimed = await repo.claim_deliveries(
                pool, sink_types=["Webhook"], limit=args.batch, lease_seconds=600, worker="b"
            )
            if not claimed:
                break
            completions = [_completion(d, n + i) for i, d in enumerate(claimed)]
            # Batch by batch, one statement then the other: the same load for both.
            name = names[(n // args.batch) % len(names)]
            QUERIES["complete_deliveries"] = statements[name]
            n += len(claimed)
            started = time.perf_counter()
            await repo.complete_deliveries(pool, completions)
            timings[name].append((time.perf_counter() - started) / len(claimed))
            if n >= args.completions:
                break
        return timings
    finally:
        await pool.close()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10000)
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--completions", type=int, default=30000, help="stop after this many")
    p.add_argument("--reference", type=Path, help="a queries.sql to alternate with")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="air-relay-completions-"))
    root.chmod(0o755)
    pg = await asyncio.to_thread(PgServer, root / "pg")
    try:
        await asyncio.to_thread(pg.start)
        admin = await asyncpg.connect(pg.dsn)
        await admin.execute("CREATE DATABASE bench_completions")
        await admin.close()
        timings = await run(with_database(pg.dsn, "bench_completions"), args)
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(root, ignore_errors=True)
    for name, values in timings.items():
        per = sorted(t * 1e6 for t in values)
        print(
            f"{name} (schema {latest_version()}): {len(per)} batches of up to {args.batch} "
            f"completions ({args.sinks} sinks): per completion median "
            f"{statistics.median(per):.0f} us, p90 {per[int(len(per) * 0.9)]:.0f} us, "
            f"mean {statistics.fmean(per):.0f} us"
        )


if __name__ == "__main__":
    asyncio.run(main())
