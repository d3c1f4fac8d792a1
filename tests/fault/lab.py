"""The fault lab: owns every server and process of one scenario and cleans all of them up, plus
short-lived database queries (the server may be crashed at any time) and polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from tests.fault.postgres import PgServer
from tests.fault.relay import Relay, RssSampler, relay_config
from tests.fault.sink import CountingSink
from tests.support import deep_merge, free_port


async def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def delivery_states(dsn: str, sink_id: str | None = None) -> dict[str, int]:
    """Deliveries by status (of one sink, or all)."""
    rows = await query(
        dsn,
        "SELECT status, count(*) AS n FROM deliveries"
        " WHERE $1::uuid IS NULL OR event_sink_id = $1::uuid GROUP BY status",
        sink_id,
    )
    return {r["status"]: r["n"] for r in rows}


class FaultLab:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="air-relay-faults-"))
        self.root.chmod(0o755)  # the postgres user must traverse it
        self.run = uuid.uuid4().hex[:8]
        self.postgres_servers: list[PgServer] = []
        self.relays: list[Relay] = []
        self.sinks: list[CountingSink] = []
        self.samplers: list[RssSampler] = []

    async def postgres(self, *, start: bool = True) -> PgServer:
        pg = await asyncio.to_thread(PgServer, self.root / f"pg{len(self.postgres_servers) + 1}")
        self.postgres_servers.append(pg)
        if start:
            await asyncio.to_thread(pg.start)
        return pg

    def relay(self, name: str, dsn: str, **overrides: Any) -> Relay:
        # Each relay its own state_dir (its spool), as the docs require.
        overrides = deep_merge({"state_dir": str(self.root / f"{name}.state")}, overrides)
        relay = Relay(self.root, name, relay_config(dsn, free_port(), **overrides))
        self.relays.append(relay)
        return relay

    def twin(self, relay: Relay, name: str) -> Relay:
        """Another relay with ``relay``'s config on its own port (same database)."""
        config = deep_merge(
            relay.config,
            {"server": {"port": free_port()}, "state_dir": str(self.root / f"{name}.state")},
        )
        twin = Relay(self.root, name, config)
        self.relays.append(twin)
        return twin

    async def sink(self) -> CountingSink:
        sink = CountingSink(self.run)
        await sink.listen()
        self.sinks.append(sink)
        return sink

    def sampler(self, relays: Sequence[Relay], interval: float = 0.2) -> RssSampler:
        """An RSS sampler of ``relays``, already running (stopped by close at the latest)."""
        sampler = RssSampler(relays, interval).start()
        self.samplers.append(sampler)
        return sampler

    def diagnostics(self) -> str:
        """Every relay's error lines and the tail of its last log, for a failed scenario."""
        parts = []
        for relay in self.relays:
            errors = [r for r in relay.records() if r.get("level") in ("error", "critical")]
            parts.append(f"--- {relay.name}: {len(errors)} error lines, first ones:")
            parts.extend(json.dumps(r) for r in errors[:5])
            parts.append(f"--- {relay.name}: end of {relay.logs[-1:]}\n{relay.tail()}")
        return "\n".join(parts)

    async def close(self, *, keep: bool = False) -> None:
        for sampler in self.samplers:
            await sampler.stop()
        for relay in self.relays:
            relay.close()
        for sink in self.sinks:
            await sink.stop_listening()
        for pg in self.postgres_servers:
            await asyncio.to_thread(pg.stop)
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def fault_lab(keep: bool = False) -> AsyncIterator[FaultLab]:
    """A lab, closed afterwards; its files stay with ``keep`` or $AIR_RELAY_FAULT_KEEP set."""
    keep = keep or bool(os.environ.get("AIR_RELAY_FAULT_KEEP"))
    lab = FaultLab()
    try:
        yield lab
    finally:
        await lab.close(keep=keep)


Predicate = Callable[[], bool]


async def eventually(predicate: Predicate, timeout: float, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message or "condition not met in time")
        await asyncio.sleep(0.02)
