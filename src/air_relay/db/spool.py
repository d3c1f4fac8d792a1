"""The local spool: events ingest accepted while PostgreSQL could not take them, kept on disk
under ``state_dir/spool/`` until the drainer has moved them into the outbox.

The spool is a directory of append-only segment files (``0000000000000001.seg`` ...), drained
oldest first. Each record is framed as ``length (4 bytes) | CRC32 of the payload (4 bytes) |
payload``, the payload being the event id, the arrival time, the tenant, the event name, the
organization id (JSON) and the body AIR sent, byte for byte. A record whose frame is cut short
or whose checksum does not match ends what is read of its segment: it is reported at error
level and never replayed. Appends from concurrent requests share one write and one fsync (a
group commit, as ingest shares one database commit); a caller returns only once its record is
on disk. A write that fails is cut off the file again and its segment is closed, so that no
later record is appended behind a torn one.

While the spool holds events, new ones are spooled too (arrival order holds); the drainer
hands ingest back to the database once it has drained everything, holding new appends for
the last few records so that none overtakes another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import structlog

from air_relay.db import repository as repo
from air_relay.db.batcher import GroupCommit
from air_relay.db.pool import DB_UNAVAILABLE
from air_relay.model import NewEvent, SpooledEvent
from air_relay.ordering import order_keys_of_body

log = structlog.get_logger(__name__)

_FRAME = struct.Struct(">II")  # payload length, CRC32 of the payload
_FIXED = struct.Struct(">16sq")  # event id, arrival time in microseconds since the epoch
_LENGTH = struct.Struct(">I")
# Larger than any body ingest accepts (server.max_body_bytes is checked before): a longer
# length field is corruption, not a record.
MAX_RECORD_BYTES = 256 * 1024 * 1024
SUFFIX = ".seg"
# A segment is closed (and becomes drainable on its own) at this size.
SEGMENT_BYTES = 8 * 1024 * 1024
# Longest an append waits for the drainer's hand-off to the database.
HOLD_SECONDS = 5.0


class SpoolFull(Exception):
    """The record would take the spool over ``spool.max_bytes``."""


# --- the record format ------------------------------------------------------------------------


def encode(spooled: SpooledEvent) -> bytes:
    """One framed record."""
    e = spooled.event
    micros = round(spooled.received_at.timestamp() * 1_000_000)
    parts = [
        e.tenant_id.encode(),
        e.event_name.encode(),
        json.dumps(e.organization_id).encode(),
        e.body,
    ]
    payload = _FIXED.pack(e.event_id.bytes, micros) + b"".join(
        _LENGTH.pack(len(p)) + p for p in parts
    )
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> SpooledEvent:
    """The record of a payload whose checksum matched; ValueError if it does not parse."""
    try:
        raw_id, micros = _FIXED.unpack_from(payload)
        offset = _FIXED.size
        parts = []
        for _ in range(4):
            (n,) = _LENGTH.unpack_from(payload, offset)
            offset += _LENGTH.size
            if offset + n > len(payload):
                raise ValueError("field runs past the record")
            parts.append(payload[offset : offset + n])
            offset += n
        if offset != len(payload):
            raise ValueError("trailing bytes in the record")
        tenant, name, org, body = parts
        organization_id = json.loads(org)
        if isinstance(organization_id, bool) or not isinstance(organization_id, int | str):
            raise ValueError("organization id is neither an integer nor a string")
        event_name = name.decode()
        # The keys are not in the record: read again from the body, as ingest read them.
        keys = order_keys_of_body(event_name, body)
        event = NewEvent(
            uuid.UUID(bytes=raw_id), tenant.decode(), event_name, organization_id, body, keys
        )
        received_at = datetime.fromtimestamp(micros / 1_000_000, UTC)
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, OverflowError) as exc:
        raise ValueError(str(exc)) from exc
    return SpooledEvent(event, received_at)


@dataclass
class SegmentContents:
    """What reading a segment found: the intact records, and where and why it stopped early."""

    records: list[SpooledEvent]
    size: int
    intact_bytes: int
    problem: str | None = None


def read_segment(path: Path) -> SegmentContents:
    """Every intact record of a segment, in order, up to the first torn or corrupt one."""
    data = path.read_bytes()
    records: list[SpooledEvent] = []
    offset = 0
    problem = None
    while offset < len(data):
        if len(data) - offset < _FRAME.size:
            problem = "torn record header"
            break
        length, crc = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        if length > MAX_RECORD_BYTES or start + length > len(data):
            problem = "torn record (its length runs past the end of the segment)"
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            problem = "checksum mismatch"
            break
        try:
            records.append(decode(payload))
        except ValueError as exc:
            problem = f"undecodable record ({exc})"
            break
        offset = start + length
    return SegmentContents(records, len(data), offset, problem)


# --- the spool --------------------------------------------------------------------------------


@dataclass(eq=False)
class Segment:
    number: int
    path: Path
    events: int = 0  # records appended (or found at start-up)
    bytes: int = 0
    drained: int = 0  # leading records already committed to the database
    fd: int | None = field(default=None, repr=False)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Spool:
    """The segments of ``directory`` and the appends to them; one instance per directory."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segments: list[Segment] = []
        self._active: Segment | None = None  # the segment appends go to
        self._queued_bytes = 0
        self._pending = 0  # appends past the gate, not yet on disk or failed
        self._write_lock = asyncio.Lock()
        self._open_gate = asyncio.Event()
        self._open_gate.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._commit: GroupCommit[bytes, None] = GroupCommit(self._write_batch, max_flushes=1)
        self.spooled_total = 0
        self.fsyncs = 0  # write batches made durable (appends share them)
        # True from the first append until the drainer hands ingest back to the database.
        self.spooling = False
        self.drain_wanted = asyncio.Event()

    # -- state ---------------------------------------------------------------------------------

    @property
    def events(self) -> int:
        """Records in the spool not yet committed to the database."""
        return sum(s.events - s.drained for s in self.segments)

    @property
    def size(self) -> int:
        """Bytes of the segment files."""
        return sum(s.bytes for s in self.segments)

    def open(self) -> None:
        """Find the segments a previous run left (blocking: run it in a thread)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                number = int(path.stem)
            except ValueError:
                continue
            contents = read_segment(path)
            self.segments.append(
                Segment(number, path, events=len(contents.records), bytes=contents.size)
            )
        if self.segments:
            self.spooling = True
            self.drain_wanted.set()
            log.warning(
                "spool_found",
                directory=str(self.directory),
                segments=len(self.segments),
                events=self.events,
                bytes=self.size,
            )

    # -- appending -----------------------------------------------------------------------------

    async def accepts(self) -> bool:
        """Whether ingest must spool (the spool holds events), once a hand-off to the
        database in progress is over. Ingest calls it only after seeing ``spooling``."""
        await self._through_gate()
        return self.spooling

    async def _through_gate(self) -> None:
        """Wait while a hand-off holds appends, but not for ever: a drain stuck on a
        database that hangs must not leave AIR without an answer. An append let through
        late is still durable and drained next; only its order may suffer."""
        if self._open_gate.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._open_gate.wait(), HOLD_SECONDS)

    async def append(self, spooled: SpooledEvent) -> None:
        """Put the event on disk (fsync'd, shared with concurrent appends). SpoolFull when it
        does not fit in ``max_bytes``; OSError when the disk refuses it."""
        await self._through_gate()
        record = encode(spooled)
        if self.size + self._queued_bytes + len(record) > self.max_bytes:
            raise SpoolFull(f"the spool holds {self.size} bytes of at most {self.max_bytes}")
        if not self.spooling:
            self.spooling = True
            log.warning("spool_started", directory=str(self.directory))
        self._queued_bytes += len(record)
        self._pending += 1
        self._idle.clear()
        try:
            await self._commit.submit(record)
        finally:
            self._queued_bytes -= len(record)
            self._pending -= 1
            if not self._pending:
                self._idle.set()
        self.spooled_total += 1
        self.drain_wanted.set()

    async def _write_batch(self, records: Sequence[bytes]) -> list[None]:
        async with self._write_lock:
            segment = self._active
            if segment is None:
                number = max((s.number for s in self.segments), default=0) + 1
                segment = Segment(number, self.directory / f"{number:016d}{SUFFIX}")
            data = b"".join(records)
            try:
                await asyncio.to_thread(self._write_sync, segment, data)
            except BaseException:
                # The segment ends here (its torn tail, if any, was cut off): later records go
                # to a new one, never behind a half-written record.
                self._close(segment)
                if self._active is segment:
                    self._active = None
                elif segment not in self.segments and segment.path.exists():
                    self.segments.append(segment)  # empty, or torn: the drainer removes it
                raise
            self.fsyncs += 1
            if self._active is None:
                self._active = segment
                self.segments.append(segment)
            segment.events += len(records)
            segment.bytes += len(data)
            if segment.bytes >= SEGMENT_BYTES:
                self._close(segment)
                self._active = None
        return [None] * len(records)

    def _write_sync(self, segment: Segment, data: bytes) -> None:
        if segment.fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            segment.fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            _fsync_directory(self.directory)  # the new file's name is durable too
        try:
            _write_all(segment.fd, data)
            os.fdatasync(segment.fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(segment.fd, segment.bytes)
            raise

    @staticmethod
    def _close(segment: Segment) -> None:
        if segment.fd is not None:
            with contextlib.suppress(OSError):
                os.close(segment.fd)
            segment.fd = None

    # -- draining ------------------------------------------------------------------------------

    async def seal(self) -> list[Segment]:
        """Close the segment being appended to (it waits for a write in progress); returns
        every segment, oldest first, all now closed to appends."""
        async with self._write_lock:
            if self._active is not None:
                self._close(self._active)
                self._active = None
            return list(self.segments)

    async def remove(self, segment: Segment, *, corrupt: bool) -> None:
        """Forget a drained segment: deleted, or kept aside as ``.corrupt`` for inspection."""

        def remove_file() -> None:
            if corrupt:
                segment.path.rename(segment.path.with_suffix(".corrupt"))
            else:
                segment.path.unlink(missing_ok=True)
            _fsync_directory(self.directory)

        await asyncio.to_thread(remove_file)
        self.segments.remove(segment)

    @contextlib.asynccontextmanager
    async def handoff(self) -> AsyncIterator[None]:
        """Hold new appends (they wait) until the block ends, once those in progress are on
        disk; the drainer drains the rest inside and may end spooling."""
        self._open_gate.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open_gate.set()

    def end_spooling(self) -> bool:
        """Hand ingest back to the database if nothing is left or on its way in."""
        if self.segments or self._pending:
            return False
        self.spooling = False
        self.drain_wanted.clear()
        return True

    def close(self) -> None:
        if self._active is not None:
            self._close(self._active)
            self._active = None


class SpoolDrainer:
    """Moves spooled events into the outbox, oldest first, in batches, as soon as the database
    answers; a segment is removed only once all its events are committed."""

    # Drain passes go on while appends keep coming; a pass that found fewer than this many
    # records is followed by the hand-off, which holds new appends for so few.
    HANDOFF_RECORDS = 512

    def __init__(
        self,
        spool: Spool,
        pool: asyncpg.Pool,
        *,
        acquire_timeout: float,
        batch_size: int = 256,
        max_delay: float = 2.0,
    ) -> None:
        self.spool = spool
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self.batch_size = batch_size
        self.max_delay = max_delay
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.2
        while True:
            await self.spool.drain_wanted.wait()
            try:
                await self.drain()
            except DB_UNAVAILABLE as exc:
                log.info("spool_drain_waiting", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            except Exception:
                log.exception("spool_drain_failed", retry_in=self.max_delay)
                await asyncio.sleep(self.max_delay)
                continue
            delay = 0.2

    async def drain(self) -> None:
        """Drain everything, then hand ingest back to the database (raises DB_UNAVAILABLE
        when the database cannot take the events yet; what was committed stays committed)."""
        spool = self.spool
        if not spool.spooling and not spool.segments:
            spool.drain_wanted.clear()
            return
        started = time.monotonic()
        drained = 0
        while True:
            found = 0
            for segment in await spool.seal():
                found += await self._drain_segment(segment)
            drained += found
            if found < self.HANDOFF_RECORDS:
                break
        async with spool.handoff():
            for segment in await spool.seal():
                drained += await self._drain_segment(segment)
            if not spool.end_spooling():
                return  # an append let through late (see _through_gate): drained next
        log.info("spool_drained", events=drained, seconds=round(time.monotonic() - started, 3))

    async def _drain_segment(self, segment: Segment) -> int:
        contents = await asyncio.to_thread(read_segment, segment.path)
        if contents.problem:
            log.error(
                "spool_record_corrupt",
                segment=str(segment.path),
                problem=contents.problem,
                offset=contents.intact_bytes,
                skipped_bytes=contents.size - contents.intact_bytes,
                intact_records=len(contents.records),
            )
        records = contents.records
        moved = 0
        for start in range(segment.drained, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            await repo.ingest_spooled_events(self.pool, batch, timeout=self.acquire_timeout)
            segment.drained = start + len(batch)
            moved += len(batch)
        # Records counted at append or start-up beyond the intact ones are gone: not events.
        segment.events = max(segment.drained, len(records))
        await self.spool.remove(segment, corrupt=contents.problem is not None)
        return moved
