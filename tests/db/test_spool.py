"""The spool's segment format (torn tails, corrupt checksums, many records), its group-commit
fsync, and the drain into a real database: idempotent by event id, in order, segments removed
only once committed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from air_relay.db.pool import create_pool
from air_relay.db.spool import Spool, SpoolDrainer, SpoolFull, encode, read_segment
from air_relay.model import NewEvent, SpooledEvent
from tests.support import TENANT

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def spooled(seq: int, *, org: int | str = 1, body: bytes | None = None) -> SpooledEvent:
    raw = body if body is not None else f'{{"eventName": "E", "seq": {seq}}}'.encode()
    event = NewEvent(uuid.uuid4(), TENANT, "CaseCreatedEvent", org, raw)
    return SpooledEvent(event, T0 + timedelta(milliseconds=seq))


def segment_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("*.seg"))


def test_records_round_trip(tmp_path: Path) -> None:
    records = [
        spooled(0),
        spooled(1, org="org-7"),
        spooled(2, body=b""),
        spooled(3, body=bytes(range(256)) * 300),
        spooled(4, org=-(2**63)),
    ]
    path = tmp_path / "1.seg"
    path.write_bytes(b"".join(encode(r) for r in records))
    contents = read_segment(path)
    assert contents.problem is None
    assert contents.records == records
    assert contents.intact_bytes == contents.size


def test_many_records(tmp_path: Path) -> None:
    records = [spooled(i) for i in range(20_000)]
    path = tmp_path / "1.seg"
    path.write_bytes(b"".join(encode(r) for r in records))
    contents = read_segment(path)
    assert contents.problem is None
    assert [r.event.event_id for r in contents.records] == [r.event.event_id for r in records]


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 9, 20, -1])
def test_torn_tail_is_detected(tmp_path: Path, cut: int) -> None:
    records = [spooled(i) for i in range(3)]
    data = b"".join(encode(r) for r in records)
    last = len(encode(records[2]))
    path = tmp_path / "1.seg"
    # Cut inside the last record (its header or its payload).
    path.write_bytes(data[: len(data) - last + cut] if cut > 0 else data[:cut])
    contents = read_segment(path)
    assert contents.records == records[:2]
    assert contents.problem is not None and "torn" in contents.problem
    assert contents.intact_bytes == len(data) - last


def test_corrupt_checksum_stops_the_segment(tmp_path: Path) -> None:
    records = [spooled(i) for i in range(3)]
    frames = [bytearray(encode(r)) for r in records]
    frames[1][-3] ^= 0x01  # one bit of the second record's body
    path = tmp_path / "1.seg"
    path.write_bytes(b"".join(frames))
    contents = read_segment(path)
    assert contents.records == records[:1]
    assert contents.problem == "checksum mismatch"


def test_zero_filled_tail_is_not_a_record(tmp_path: Path) -> None:
    # A crash can leave a file extended with zeros: length 0 with CRC 0 is a valid frame
    # of an empty payload, which must still not parse as an event.
    path = tmp_path / "1.seg"
    path.write_bytes(encode(spooled(0)) + bytes(64))
    contents = read_segment(path)
    assert len(contents.records) == 1
    assert contents.problem is not None and "undecodable" in contents.problem


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30)
    records = [spooled(i) for i in range(300)]
    await asyncio.gather(*(spool.append(r) for r in records))
    assert spool.events == 300
    assert spool.fsyncs < 300 // 4, spool.fsyncs
    spool.close()
    (path,) = segment_files(tmp_path / "spool")
    assert read_segment(path).records == records  # in the order of the appends
    assert spool.size == path.stat().st_size


async def test_full_spool_refuses(tmp_path: Path) -> None:
    one = len(encode(spooled(0)))
    spool = Spool(tmp_path / "spool", max_bytes=3 * one)
    for i in range(3):
        await spool.append(spooled(i))
    with pytest.raises(SpoolFull):
        await spool.append(spooled(3))
    assert spool.events == 3


async def test_failed_write_answers_an_error_and_starts_a_new_segment(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, max_bytes=1 << 30)
    await spool.append(spooled(0))
    await spool.seal()  # the next append needs a new segment file
    aside = tmp_path / "aside"
    spool_dir.rename(aside)
    spool_dir.write_bytes(b"")  # a file where the directory was: the write fails
    try:
        with pytest.raises(OSError):
            await spool.append(spooled(1))
    finally:
        spool_dir.unlink()
        aside.rename(spool_dir)
    await spool.append(spooled(2))
    assert spool.events == 2
    assert [len(read_segment(p).records) for p in segment_files(spool_dir)] == [1, 1]


@pytest.fixture
async def pool(db_dsn: str) -> Any:
    the_pool = await create_pool(db_dsn, 1, 4)
    yield the_pool
    await the_pool.close()


async def sink_row(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO event_sinks (id, tenant_id, name, description, sink_type, args)"
        " VALUES (gen_random_uuid(), $1, 's', '', 'Webhook', '{}'::jsonb)",
        TENANT,
    )


async def test_drain_is_idempotent_ordered_and_removes_segments(
    tmp_path: Path, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await sink_row(db)
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, max_bytes=1 << 30)
    records = [spooled(i) for i in range(700)]
    for r in records:
        await spool.append(r)
    spool.close()
    (path,) = segment_files(spool_dir)
    copy = path.read_bytes()
    # A first drain commits a prefix, then "crashes" (the segment is left in place) ...
    await asyncio.to_thread(
        lambda: path.write_bytes(copy[: len(b"".join(encode(r) for r in records[:300]))])
    )
    first = Spool(spool_dir, max_bytes=1 << 30)
    first.open()
    assert first.spooling and first.events == 300
    await SpoolDrainer(first, pool, acquire_timeout=5, batch_size=128).drain()
    assert not segment_files(spool_dir)
    # ... and the next run finds the whole segment again and drains it: no duplicate.
    path.write_bytes(copy)
    second = Spool(spool_dir, max_bytes=1 << 30)
    second.open()
    with capture_logs() as logs:
        await SpoolDrainer(second, pool, acquire_timeout=5, batch_size=128).drain()
    assert next(e for e in logs if e["event"] == "spool_drained")["events"] == 700
    assert not second.spooling and second.events == 0 and not segment_files(spool_dir)
    rows = await db.fetch("SELECT id, received_at FROM events ORDER BY received_at")
    assert [r["id"] for r in rows] == [r.event.event_id for r in records]
    assert rows[0]["received_at"] == T0
    deliveries = await db.fetch(
        "SELECT d.event_id FROM deliveries d ORDER BY d.next_attempt_at, d.created_at"
    )
    assert [d["event_id"] for d in deliveries] == [r.event.event_id for r in records]


async def test_drain_reports_a_torn_record_and_keeps_the_segment_aside(
    tmp_path: Path, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    records = [spooled(i) for i in range(5)]
    data = b"".join(encode(r) for r in records)
    (spool_dir / f"{1:016d}.seg").write_bytes(data[:-10])
    spool = Spool(spool_dir, max_bytes=1 << 30)
    spool.open()
    with capture_logs() as logs:
        await SpoolDrainer(spool, pool, acquire_timeout=5).drain()
    (corrupt,) = [e for e in logs if e["event"] == "spool_record_corrupt"]
    assert corrupt["log_level"] == "error"
    assert corrupt["intact_records"] == 4
    assert await db.fetchval("SELECT count(*) FROM events") == 4
    assert not segment_files(spool_dir)
    assert list(spool_dir.glob("*.corrupt"))
    assert spool.events == 0 and not spool.spooling
