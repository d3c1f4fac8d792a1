"""Storm digests survive a ``kill -9`` of a real ``air-relay serve`` in the middle of a window:
after a restart every member goes out exactly once, either as the first message or in a
digest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml

from tests.support import (
    ADMIN_KEY,
    INGEST_TOKEN,
    TENANT,
    SinkServer,
    auth,
    config_data,
    free_port,
    wait_until,
)
from tests.test_process import relay_command


class Serve:
    """``air-relay serve`` on the test database, its log in a file (never a full pipe)."""

    def __init__(self, tmp_path: Path, dsn: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "config.yaml"
        self.log = tmp_path / "serve.log"
        data = config_data(
            server={"port": self.port}, database={"dsn": dsn}, state_dir=str(tmp_path / "state")
        )
        self.config.write_text(yaml.safe_dump(data))
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *relay_command(), "serve", "--config", str(self.config),
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        ready_before = self.log.read_text().count('"server_ready"')

        async def ready() -> bool:
            assert self.proc is not None and self.proc.returncode is None, self.log.read_text()
            return self.log.read_text().count('"server_ready"') > ready_before

        await wait_until(ready, timeout=30, interval=0.05)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), timeout=30)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, dsn: str) -> AsyncIterator[Serve]:
    serve = Serve(tmp_path, dsn)
    try:
        await serve.start()
        yield serve
    finally:
        with contextlib.suppress(ProcessLookupError):
            await serve.stop()


def event(n: int) -> dict[str, Any]:
    return {
        "eventName": "EndpointUninstalledEvent",
        "organizationId": 3,
        "data": {"endpointId": f"ep-{n}", "endpointName": f"ws-{n}", "seq": n},
    }


async def post(http: aiohttp.ClientSession, serve: Serve, numbers: range) -> None:
    for n in numbers:
        async with http.post(
            f"{serve.base}/v1/air/events", json=event(n), headers=auth(INGEST_TOKEN)
        ) as resp:
            assert resp.status == 202, await resp.text()


def sequence_numbers(bodies: list[dict[str, Any]]) -> Counter[int]:
    """Every event a receiver got, as the numbers it carries: one per message, or each
    envelope a digest lists."""
    seen: Counter[int] = Counter()
    for body in bodies:
        envelopes = body["digest"]["events"] if "digest" in body else [body]
        seen.update(e["data"]["seq"] for e in envelopes)
    return seen


async def test_kill_9_mid_window_then_restart_delivers_every_member_once(
    tmp_path: Path, db_dsn: str, db: asyncpg.Connection, sink_server: SinkServer
) -> None:
    async with serving(tmp_path, db_dsn) as serve, aiohttp.ClientSession() as http:
        sink = {
            "tenant_id": TENANT,
            "name": "uninstall storm",
            "description": "",
            "event_sink_args": {"Webhook": {"url": sink_server.url()}},
            "digest": {"window_seconds": 4, "max_listed": 100},
        }
        async with http.post(
            f"{serve.base}/v1/event_sink", json=sink, headers=auth(ADMIN_KEY)
        ) as r:
            assert r.status == 200, await r.text()
        await post(http, serve, range(1))
        await sink_server.wait_for(1)
        await post(http, serve, range(1, 21))
        started = time.monotonic()

        async def all_held() -> bool:
            n = await db.fetchval("SELECT count(*) FROM deliveries WHERE digest_id IS NOT NULL")
            return bool(n == 20)

        await wait_until(all_held)
        # Mid-window: the members are held (one of them the carrier, due when it closes).
        assert time.monotonic() - started < 4
        assert await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'held'") == 19
        await serve.kill()
        await serve.start()
        await post(http, serve, range(21, 31))

        async def all_delivered() -> bool:
            n = await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
            return bool(n == 31)

        await wait_until(all_delivered, timeout=20)
    bodies = [r.json() for r in sink_server.received]
    assert sequence_numbers(bodies) == Counter(range(31))  # each exactly once
    digests = [b for b in bodies if "digest" in b]
    # The members held before the kill went out together, in one digest.
    assert any(set(range(1, 21)) <= set(sequence_numbers([d])) for d in digests)
    log = (tmp_path / "serve.log").read_text()
    assert log.count('"server_ready"') == 2
    assert json.loads(log.splitlines()[0])  # a JSON log, as serve writes it
