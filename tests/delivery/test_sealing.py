"""The sealed audit log: seals chain batches of audit rows, never skip a row that commits late,
one instance seals at a time, ``air-relay audit verify`` finds the first seal that no longer
matches (a row edited, deleted or inserted with SQL), retention purges whole sealed batches
only, and the audit log and ``/v1/audit_seal/latest`` show the seals."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from air_relay import model
from air_relay.config import AuditConfig, RetentionConfig
from air_relay.db import repository as repo
from air_relay.db.pool import connect, create_pool
from air_relay.delivery.retention import RetentionTask
from air_relay.delivery.sealing import (
    GENESIS_HASH,
    AuditRowsChanged,
    SealerTask,
    SealHasher,
    VerifyReport,
    build_seal,
    canonical_row,
    canonical_time,
    verify_chain,
)
from air_relay.model import AuditBatch, AuditSeal, StoredAttempt
from tests.support import (
    TENANT,
    TENANT_B_KEY,
    SinkServer,
    api_get,
    audit_rows,
    auth,
    create_sink,
    post_event,
    wait_final,
    wait_until,
)
from tests.test_cli import run, write_config

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_dsn, 1, 4)
    yield p
    await p.close()


async def add_rows(db: asyncpg.Connection, n: int, *, error: str | None = None) -> list[int]:
    """``n`` audit rows (attempts need no delivery row); their ids."""
    ids = []
    for i in range(n):
        ids.append(
            await db.fetchval(
                "INSERT INTO delivery_attempts (delivery_id, tenant_id, event_id, event_name,"
                " organization_id, event_sink_id, event_sink_type, attempt, outcome,"
                " status_code, error, response_body, duration_ms, next_attempt_at, created_at)"
                " VALUES ($1, $2, $3, 'CaseCreatedEvent', $4, $5, 'Webhook', $6, 'failure',"
                " 503, $7, 'busy ☃', 12, $8, $9) RETURNING id",
                uuid.uuid4(),
                TENANT,
                uuid.uuid4(),
                i if i % 2 else f"org-{i}",
                uuid.uuid4(),
                i + 1,
                error or "http_503",
                T0 + timedelta(seconds=30),
                T0 + timedelta(seconds=i),
            )
        )
    return ids


async def burn_id(db: asyncpg.Connection) -> None:
    """Draw one id and roll back: a gap in the ids, as a failed insert leaves."""
    tx = db.transaction()
    await tx.start()
    await add_rows(db, 1)
    await tx.rollback()


def reference_seal(
    previous: AuditSeal | None, sealed_at: datetime, rows: list[StoredAttempt]
) -> AuditSeal:
    """The seal after ``previous`` covering ``rows``, made in one go from SealHasher: what the
    sealer's paged, stepwise build_seal must equal."""
    seal_id, prev_hash = (previous.id + 1, previous.hash) if previous else (1, GENESIS_HASH)
    first_id = previous.last_id + 1 if previous else 1
    hasher = SealHasher(seal_id, sealed_at, first_id, rows[-1].id, len(rows), prev_hash)
    for row in rows:
        hasher.add(row)
    return AuditSeal(
        seal_id, sealed_at, first_id, rows[-1].id, len(rows), prev_hash, hasher.hexdigest()
    )


async def one_page(rows: list[StoredAttempt]) -> AsyncIterator[list[StoredAttempt]]:
    yield rows


def sealer(pool: asyncpg.Pool, max_rows: int = 2, horizon_tries: int = 3) -> SealerTask:
    # Pages of 3 rows: batches of up to 10 are read in several.
    return SealerTask(
        pool, AuditConfig(), max_rows=max_rows, page_rows=3, horizon_tries=horizon_tries
    )


async def verify(db: asyncpg.Connection) -> VerifyReport:
    async with repo.audit_snapshot(db) as snapshot:
        return await verify_chain(snapshot)


async def seals(db: asyncpg.Connection) -> list[tuple[int, int, int, int]]:
    rows = await db.fetch("SELECT id, first_id, last_id, row_count FROM audit_seals ORDER BY id")
    return [tuple(r) for r in rows]


# --- sealing ----------------------------------------------------------------------------------


async def test_seals_chain_batches_in_id_order(pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    assert (await verify(db)).ok  # nothing yet
    await add_rows(db, 5)
    with capture_logs() as logs:
        made = await sealer(pool).run_logged()
    assert made is not None
    assert [(s.id, s.first_id, s.last_id, s.row_count) for s in made] == [
        (1, 1, 2, 2),
        (2, 3, 4, 2),
        (3, 5, 5, 1),
    ]
    assert made[0].prev_hash == GENESIS_HASH
    assert [s.prev_hash for s in made[1:]] == [s.hash for s in made[:-1]]
    lines = [e for e in logs if e["event"] == "audit_sealed"]
    assert [e["seal_id"] for e in lines] == [1, 2, 3]
    assert lines[2]["hash"] == made[2].hash and lines[2]["row_count"] == 1
    # Nothing new: no empty seal.
    assert await sealer(pool).run_once() == []
    await add_rows(db, 1)
    (fourth,) = await sealer(pool).run_once()
    assert (fourth.id, fourth.first_id, fourth.last_id, fourth.prev_hash) == (4, 6, 6, made[2].hash)
    report = await verify(db)
    assert report.ok, report.problem
    assert (report.seals, report.rows, report.unsealed_rows) == (4, 6, 0)


_texts = st.text(max_size=40)  # any code point, surrogates and controls included
_times = st.datetimes(timezones=st.just(UTC))
_attempts = st.builds(
    StoredAttempt,
    id=st.integers(1, 2**63 - 1),
    delivery_id=st.uuids(),
    tenant_id=_texts,
    event_id=st.uuids(),
    event_name=_texts,
    organization_id=st.one_of(st.integers(-(2**63), 2**63), _texts),
    event_sink_id=st.uuids(),
    event_sink_type=_texts,
    attempt=st.integers(1, 2**31),
    outcome=st.sampled_from(["success", "failure"]),
    status_code=st.none() | st.integers(100, 599),
    error=st.none() | _texts,
    response_body=st.none() | _texts,
    duration_ms=st.integers(0, 2**31),
    next_attempt_at=st.none() | _times,
    created_at=_times,
    error_detail=st.none() | _texts,
)


@settings(max_examples=300, deadline=None)
@given(_attempts)
def test_the_canonical_row_is_the_documented_json(row: StoredAttempt) -> None:
    # canonical_row writes the JSON by hand (speed); it must equal what the documentation says:
    # json.dumps of every column, keys sorted, compact, ASCII, error_detail left out while NULL.
    fields = {k: v for k, v in row.__dict__.items() if not (k == "error_detail" and v is None)}
    for key, value in fields.items():
        if isinstance(value, datetime):
            fields[key] = canonical_time(value)
        elif isinstance(value, uuid.UUID):
            fields[key] = str(value)
    documented = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert canonical_row(row) == documented.encode("ascii")


async def test_hash_is_the_documented_one(pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    """The seal recomputed from the definition in docs/operations.md, independently."""
    await add_rows(db, 2)
    (seal,) = await sealer(pool, max_rows=10).run_once()
    raw = await db.fetch(
        "SELECT *, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        " AS created_text, to_char(next_attempt_at AT TIME ZONE 'UTC',"
        ' \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\') AS next_text FROM delivery_attempts ORDER BY id'
    )
    sealed_at = await db.fetchval(
        "SELECT to_char(sealed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        " FROM audit_seals"
    )
    text = f"air-relay-audit-seal-v1\n1\n{sealed_at}\n1\n{raw[-1]['id']}\n2\n{'0' * 64}\n"
    for r in raw:
        row = {k: v for k, v in r.items() if k not in ("created_text", "next_text")}
        row.update(created_at=r["created_text"], next_attempt_at=r["next_text"])
        row.update({k: str(row[k]) for k in ("delivery_id", "event_id", "event_sink_id")})
        if row["error_detail"] is None:
            del row["error_detail"]  # documented: left out while NULL
        text += json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n"
    assert '"response_body":"busy \\u2603"' in text  # non-ASCII as \u escapes
    assert hashlib.sha256(text.encode("ascii")).hexdigest() == seal.hash


async def test_a_row_that_commits_late_is_never_skipped(
    pool: asyncpg.Pool, db: asyncpg.Connection, db_dsn: str
) -> None:
    # A delivery records its attempt (the real statement) in a transaction that stays open:
    # its row has the lower id and commits last.
    await add_rows(db, 1)
    slow = await connect(db_dsn)
    tx = slow.transaction()
    await tx.start()
    claimed = model.ClaimedDelivery(
        uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), TENANT, "Webhook", 0, 1, uuid.uuid4(),
        "CaseCreatedEvent", 1, b"{}", {"url": "http://127.0.0.1:9/"}, T0,
    )  # fmt: skip
    record = model.AttemptRecord(1, "success", 200, None, "ok", 5, None, T0)
    # The real statement, on a connection whose transaction stays open.
    await repo.complete_deliveries(
        slow, [model.Completion(claimed, "delivered", None, None, [record])]
    )
    late_id = await slow.fetchval("SELECT max(id) FROM delivery_attempts")
    later = await add_rows(db, 1)  # a higher id, committed first
    assert later[0] > late_id
    try:
        # While the late row is in flight, there is no horizon: the sealer waits for it.
        assert await repo.try_audit_horizon(pool) is None
        task = asyncio.create_task(sealer(pool, max_rows=10).run_once())

        async def sealer_waits() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            return bool(n)

        await wait_until(sealer_waits)
        assert await seals(db) == []
        await tx.commit()
        made = await task
    finally:
        await slow.close()
    (seal,) = made
    assert (seal.first_id, seal.last_id, seal.row_count) == (1, later[0], 3)
    assert (await verify(db)).ok


async def test_one_sealer_at_a_time(pool: asyncpg.Pool, db: asyncpg.Connection) -> None:
    await add_rows(db, 4)
    other = await pool.acquire()
    try:
        async with other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock($1)", repo.AUDIT_SEALER_LOCK_KEY)
            assert await sealer(pool).run_logged() == []  # another instance seals: skip
        assert await seals(db) == []
    finally:
        await pool.release(other)
    # Two sealers at once (two instances): one chain, no seal twice.
    await asyncio.gather(*(sealer(pool, max_rows=1).run_logged() for _ in range(4)))
    await sealer(pool, max_rows=1).run_once()
    assert [s[0] for s in await seals(db)] == [1, 2, 3, 4]
    assert (await verify(db)).ok


async def test_a_seal_overtaken_while_it_was_hashed_is_dropped(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    # Rows are hashed outside any transaction; another instance may seal them meanwhile.
    await add_rows(db, 3)

    async def overtaken(
        previous: AuditSeal | None, sealed_at: datetime, batch: AuditBatch, pages: Any
    ) -> AuditSeal:
        await sealer(pool, max_rows=10).run_once()  # the other instance, faster
        return await build_seal(previous, sealed_at, batch, pages)

    with pytest.raises(repo.SealerBusy):
        await repo.seal_next_batch(pool, horizon=10, max_rows=10, page_rows=2, build=overtaken)
    assert await seals(db) == [(1, 1, 3, 3)]
    assert (await verify(db)).ok


async def test_sealer_runs_in_the_background_and_entries_show_their_seal(
    make_relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    relay = await make_relay(audit={"seal_interval_seconds": 0.05})
    status, body = await api_get(relay, "/v1/audit_seal/latest")
    assert (status, body) == (200, {"data": {"audit_seal": None}})
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await post_event(relay, {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {}})
    await wait_final(db)

    async def sealed() -> bool:
        return all(r["seal_id"] is not None for r in await audit_rows(relay))

    await wait_until(sealed)
    (entry,) = await audit_rows(relay)
    # Seals are global: a key holding one tenant may read the newest one too.
    status, body = await api_get(relay, "/v1/audit_seal/latest", key=TENANT_B_KEY)
    assert status == 200
    latest = body["data"]["audit_seal"]
    assert latest["id"] == entry["seal_id"]
    assert latest["first_id"] <= entry["id"] <= latest["last_id"]
    assert len(latest["hash"]) == 64 and latest["prev_hash"] == GENESIS_HASH
    assert latest["sealed_at"].endswith("Z")
    resp = await relay.get("/v1/audit_seal/latest")
    assert resp.status == 401
    resp = await relay.get("/v1/audit_seal/latest", headers=auth("not-a-key"))
    assert resp.status == 401


# --- verification: tampering with SQL -------------------------------------------------------


async def three_seals(pool: asyncpg.Pool, db: asyncpg.Connection) -> list[AuditSeal]:
    """Seal 1: rows 1-2; seal 2: ids 3-5 (id 3 was never committed); seal 3: rows 6-7."""
    await add_rows(db, 2)
    await burn_id(db)
    await add_rows(db, 4)
    made = await sealer(pool).run_once()
    assert [(s.first_id, s.last_id, s.row_count) for s in made] == [(1, 2, 2), (3, 5, 2), (6, 7, 2)]
    await add_rows(db, 1)  # row 8: not sealed yet
    return made


TAMPERING = {
    "edit": "UPDATE delivery_attempts SET status_code = 200, outcome = 'success' WHERE id = 4",
    # error_detail is left out of the hash while NULL, and hashed once set.
    "detail": "UPDATE delivery_attempts SET error_detail = 'made up' WHERE id = 4",
    "delete": "DELETE FROM delivery_attempts WHERE id = 5",
    "insert": "INSERT INTO delivery_attempts OVERRIDING SYSTEM VALUE"
    " SELECT 3, delivery_id, tenant_id, event_id, event_name, organization_id, event_sink_id,"
    " event_sink_type, attempt, 'success', 200, NULL, 'ok', duration_ms, NULL, created_at"
    " FROM delivery_attempts WHERE id = 4",
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
async def test_verify_fails_on_the_seal_of_a_tampered_row(
    tampering: str, pool: asyncpg.Pool, db: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    await three_seals(pool, db)
    config = write_config(tmp_path / "relay.yaml", {"database": {"dsn": db_dsn}})
    before = await asyncio.to_thread(run, "audit", "verify", "--config", str(config))
    assert before.returncode == 0, before.stderr
    assert "seals 1 to 3 match (3 seals, 6 rows); 1 newer rows not sealed yet" in before.stdout

    await db.execute(TAMPERING[tampering])
    after = await asyncio.to_thread(run, "audit", "verify", "--config", str(config))
    assert after.returncode == 1, after.stderr
    assert "FAILED at seal 2 (rows 3 to 5," in after.stdout
    assert "1 older seals matched" in after.stdout
    changed = tampering in ("edit", "detail")
    expected = "was changed" if changed else "rows were deleted or inserted"
    assert expected in after.stdout


async def test_verify_fails_on_a_changed_or_missing_seal(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await three_seals(pool, db)
    await db.execute("UPDATE audit_seals SET sealed_at = sealed_at + interval '1 s' WHERE id = 3")
    report = await verify(db)
    assert report.failed is not None and report.failed.id == 3
    await db.execute("DELETE FROM audit_seals WHERE id = 2")
    report = await verify(db)
    assert report.failed is not None and report.failed.id == 3
    assert report.problem == "seal 2 is missing (the chain goes from 1 to 3)"


async def test_rows_inserted_below_the_oldest_seal_fail_it(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await three_seals(pool, db)
    await db.execute("DELETE FROM delivery_attempts WHERE id <= 2")
    await db.execute("DELETE FROM audit_seals WHERE id = 1")  # as retention would
    assert (await verify(db)).ok
    await db.execute(TAMPERING["insert"].replace("SELECT 3,", "SELECT 1,"))
    report = await verify(db)
    assert report.failed is not None and report.failed.id == 2
    assert report.problem == "1 rows lie before its first row (id 3)"


# --- retention ----------------------------------------------------------------------------


OLD = datetime.now(UTC) - timedelta(days=40)


async def sealed_long_ago(
    previous: AuditSeal | None, _at: datetime, batch: AuditBatch, pages: Any
) -> AuditSeal:
    return await build_seal(previous, OLD, batch, pages, rest=0)


async def test_retention_purges_whole_sealed_batches_and_verify_passes_after(
    pool: asyncpg.Pool, db: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    await add_rows(db, 6)
    # Three seals of two rows, made 40 days ago, then two rows not sealed at all.
    for _ in range(3):
        await repo.seal_next_batch(pool, horizon=6, max_rows=2, page_rows=1, build=sealed_long_ago)
    await add_rows(db, 2)
    task = RetentionTask(pool, RetentionConfig(days=30, batch_size=10), batch_pause=0)
    counts = await task.run_once()
    # Seals 1 and 2 go whole; seal 3 is the newest (the chain goes on from it) and stays, and
    # unsealed rows are never purged.
    assert (counts.audit_seals, counts.audit_rows) == (2, 4)
    assert await seals(db) == [(3, 5, 6, 2)]
    assert [r["id"] for r in await db.fetch("SELECT id FROM delivery_attempts ORDER BY id")] == [
        5,
        6,
        7,
        8,
    ]
    report = await verify(db)
    assert report.ok and report.oldest is not None and report.oldest.id == 3
    assert report.unsealed_rows == 2

    # Once a newer seal exists, the old newest goes too; a recent seal never does.
    await sealer(pool, max_rows=10).run_once()
    counts = await task.run_once()
    assert (counts.audit_seals, counts.audit_rows) == (1, 2)
    assert await seals(db) == [(4, 7, 8, 2)]
    assert (await task.run_once()).audit_seals == 0
    config = write_config(tmp_path / "relay.yaml", {"database": {"dsn": db_dsn}})
    result = await asyncio.to_thread(run, "audit", "verify", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "seals 4 to 4 match (1 seals, 2 rows)" in result.stdout


async def test_purge_never_takes_part_of_a_batch_under_concurrency(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await add_rows(db, 12)
    for _ in range(6):
        await repo.seal_next_batch(pool, horizon=12, max_rows=2, page_rows=1, build=sealed_long_ago)
    cfg = RetentionConfig(days=30, batch_size=10)
    results = await asyncio.gather(
        *(RetentionTask(pool, cfg, batch_pause=0).run_once() for _ in range(3))
    )
    assert sum(r.audit_seals for r in results) == 5
    assert sum(r.audit_rows for r in results) == 10
    assert await seals(db) == [(6, 11, 12, 2)]
    assert (await verify(db)).ok


async def test_seal_builder_covers_gaps_in_ids() -> None:
    row = StoredAttempt(
        9, uuid.uuid4(), TENANT, uuid.uuid4(), "E", 1, uuid.uuid4(), "Webhook", 1, "success",
        200, None, None, 1, None, T0,
    )  # fmt: skip
    previous = AuditSeal(1, T0, 1, 4, 4, GENESIS_HASH, "a" * 64)
    batch = AuditBatch(5, 9, 1)
    seal = await build_seal(previous, T0, batch, one_page([row]))
    assert (seal.id, seal.first_id, seal.last_id, seal.row_count) == (2, 5, 9, 1)
    assert seal.prev_hash == "a" * 64
    later = await build_seal(previous, T0 + timedelta(microseconds=1), batch, one_page([row]))
    assert later.hash != seal.hash


async def test_the_audit_write_lock_is_taken_before_any_id_is_drawn(
    pool: asyncpg.Pool, db: asyncpg.Connection, db_dsn: str
) -> None:
    # The horizon is sound only if a completion holds the lock before its attempt ids are
    # drawn: while the sealer holds it, a completion must not have advanced the sequence.
    claimed = model.ClaimedDelivery(
        uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), TENANT, "Webhook", 0, 1, uuid.uuid4(),
        "CaseCreatedEvent", 1, b"{}", {"url": "http://127.0.0.1:9/"}, T0,
    )  # fmt: skip
    record = model.AttemptRecord(1, "success", 200, None, "ok", 5, None, T0)
    holder = await connect(db_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", repo.AUDIT_WRITE_LOCK_KEY)
        sequence = "SELECT last_value, is_called FROM delivery_attempts_id_seq"
        before = tuple(await db.fetchrow(sequence))
        writing = asyncio.create_task(
            repo.complete_deliveries(
                pool, [model.Completion(claimed, "delivered", None, None, [record])]
            )
        )

        async def waits_for_the_lock() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            return bool(n)

        await wait_until(waits_for_the_lock)
        assert tuple(await db.fetchrow(sequence)) == before
        assert not writing.done()
        await holder.execute("SELECT pg_advisory_unlock($1)", repo.AUDIT_WRITE_LOCK_KEY)
        await writing
        assert await db.fetchval("SELECT count(*) FROM delivery_attempts") == 1
    finally:
        await holder.close()


async def test_the_stepwise_seal_read_in_pages_is_the_same_seal(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    # The sealer reads a batch in pages and hashes it a step at a time on the event loop; the
    # hash must not depend on either (pages of 50 and steps of HASH_STEP do not line up).
    from air_relay.delivery.sealing import HASH_STEP

    await add_rows(db, HASH_STEP * 2 + 3)
    rows = [
        StoredAttempt(**dict(r))
        for r in await db.fetch("SELECT * FROM delivery_attempts ORDER BY id")
    ]
    batch = AuditBatch(1, rows[-1].id, len(rows))
    pages = repo.audit_pages(pool, batch, 50)
    assert await build_seal(None, T0, batch, pages) == reference_seal(None, T0, rows)


async def test_rows_deleted_while_a_batch_is_read_make_no_seal(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    # A batch is counted first (its header names its row count), then read in pages: a row
    # gone in between must fail the run, never seal a count the rows do not have.
    ids = await add_rows(db, 5)

    async def row_deleted_meanwhile(
        previous: AuditSeal | None, sealed_at: datetime, batch: AuditBatch, pages: Any
    ) -> AuditSeal:
        await db.execute("DELETE FROM delivery_attempts WHERE id = $1", ids[3])
        return await build_seal(previous, sealed_at, batch, pages, rest=0)

    with pytest.raises(AuditRowsChanged):
        await repo.seal_next_batch(
            pool, horizon=ids[-1], max_rows=10, page_rows=2, build=row_deleted_meanwhile
        )
    assert await seals(db) == []
