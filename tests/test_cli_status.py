"""``air-relay status``, run for real as a subprocess against a real database: the per-sink
table, and the exit code a cron job or a monitoring check reads (0 every active sink healthy
or idle, 1 one failing or the database unreadable)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from air_relay import model
from air_relay.cli import status_table
from air_relay.db import repository as repo
from air_relay.db.pool import create_pool
from tests.test_cli import run, write_config


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_dsn, 1, 2)
    yield pool
    await pool.close()


def _config(tmp_path: Path, dsn: str) -> Path:
    return write_config(
        tmp_path / "status.yaml",
        {"database": {"dsn": dsn}, "logging": {"format": "json", "level": "info"}},
    )


async def _sink(pool: asyncpg.Pool, name: str, *, active: bool = True) -> uuid.UUID:
    fields = model.SinkFields(
        "tenant-a", name, "", "Webhook", {"url": "http://127.0.0.1:9/"}, None, None, active
    )
    sink = await repo.insert_sink(pool, uuid.uuid4(), fields, max_per_tenant=10)
    assert sink is not None
    return sink.id


async def _attempt(pool: asyncpg.Pool, sink_id: uuid.UUID, ok: bool) -> None:
    """One event routed to ``sink_id`` only (the others are switched off meanwhile), claimed
    and completed with one attempt."""
    await pool.execute("UPDATE event_sinks SET active = (id = $1)", sink_id)
    await repo.ingest_events(
        pool, [model.NewEvent(uuid.uuid4(), "tenant-a", "E", 1, b"{}")], timeout=5
    )
    (claim,) = await repo.claim_deliveries(
        pool, sink_types=["Webhook"], limit=10, lease_seconds=60, worker="w"
    )
    now = datetime.now(UTC)
    attempt = (
        model.AttemptRecord(1, model.SUCCESS, 200, None, "", 1, None, now)
        if ok
        else model.AttemptRecord(1, model.FAILURE, 503, "http_503", "", 1, None, now)
    )
    status = model.DELIVERED if ok else model.PENDING
    await repo.complete_deliveries(pool, [model.Completion(claim, status, now, None, [attempt])])


async def test_status_prints_every_sink_and_exits_by_their_state(
    pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    path = _config(tmp_path, db_dsn)
    empty = await asyncio.to_thread(run, "status", "--config", str(path))
    assert (empty.returncode, empty.stdout.splitlines()[-1]) == (0, "0 sinks, 0 failing")

    up = await _sink(pool, "receiver-up")
    down = await _sink(pool, "receiver-down")
    idle = await _sink(pool, "never-used")
    await _attempt(pool, up, ok=True)
    await _attempt(pool, down, ok=False)
    await pool.execute("UPDATE event_sinks SET active = true")

    failing = await asyncio.to_thread(run, "status", "--config", str(path))
    assert failing.returncode == 1, failing.stderr
    lines = failing.stdout.splitlines()
    assert lines[0].split()[:5] == ["TENANT", "SINK", "ID", "NAME", "TYPE"]
    by_id = {line.split()[1]: line for line in lines[1:-1]}
    assert set(by_id) == {str(up), str(down), str(idle)}
    assert " HEALTHY " in by_id[str(up)] and "receiver-up" in by_id[str(up)]
    assert " FAILING " in by_id[str(down)] and by_id[str(down)].endswith("http_503")
    assert " IDLE " in by_id[str(idle)]
    # SINCE, PENDING, OLDEST (an age), DEAD: one pending delivery, the failed one.
    cells = by_id[str(down)].split()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cells[5])
    assert (cells[6], cells[8]) == ("1", "0") and re.fullmatch(r"\d+[smhd]", cells[7])
    assert by_id[str(idle)].split()[5:9] == ["-", "0", "-", "0"]
    assert lines[-1] == "3 sinks, 1 failing"

    # A failing sink that is switched off no longer fails the check.
    await pool.execute("UPDATE event_sinks SET active = false WHERE id = $1", down)
    switched_off = await asyncio.to_thread(run, "status", "--config", str(path))
    assert switched_off.returncode == 0, switched_off.stdout
    assert " INACTIVE " in switched_off.stdout


def test_status_exits_1_when_the_database_is_unreachable(tmp_path: Path) -> None:
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    path = _config(tmp_path, "postgresql://relay:pw@127.0.0.1:9/air")
    result = run("status", "--config", str(path), "--wait", "1", timeout=60)
    assert result.returncode == 1
    assert '"status_failed"' in result.stderr and "pw@" not in result.stderr
    assert result.stdout == ""


def test_status_needs_no_ingest_token_or_api_key(tmp_path: Path) -> None:
    # A monitoring check reads the database only: the secrets of AIR and the API clients may
    # be unset for it (check-config, like serve, still insists on them).
    path = write_config(
        tmp_path / "monitor.yaml",
        {
            "database": {"dsn": "postgresql://relay:pw@127.0.0.1:9/air"},
            "ingest": {"tokens": [{"token": "${AIR_RELAY_INGEST_TOKEN}", "tenant_id": "t"}]},
            "api": {"keys": [{"key": "${AIR_RELAY_API_KEY}", "tenant_ids": ["*"]}]},
        },
    )
    result = run("status", "--config", str(path), "--wait", "1", timeout=60)
    assert result.returncode == 1, result.stderr  # the database, not the config (exit 2)
    assert '"status_failed"' in result.stderr and "not set" not in result.stderr
    refused = run("check-config", "--config", str(path))
    assert refused.returncode == 2
    assert "AIR_RELAY_INGEST_TOKEN" in refused.stderr and "AIR_RELAY_API_KEY" in refused.stderr


def test_status_help_is_plain_text() -> None:
    result = run("status", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: air-relay status" in result.stdout and "--config PATH" in result.stdout
    assert "``" not in result.stdout


def test_status_table_escapes_what_a_tenant_wrote() -> None:
    """A sink's name and error are the tenant's text: an escape sequence or a newline in them
    must not reach the operator's terminal (it could forge or erase rows)."""
    now = datetime.now(UTC)
    health = model.SinkHealth(
        event_sink_id=uuid.uuid4(),
        tenant_id="tenant\u202ea",
        name="a\x1b[2Kb\nc",
        type="Webhook",
        active=True,
        state=model.FAILING,
        since=now,
        last_success_at=None,
        last_failure_at=now,
        last_error="bad\r\n" + "x" * 1000,
        last_status_code=None,
        consecutive_failures=1,
        pending=0,
        dead=0,
        oldest_pending_at=None,
        delivered_last_hour=0,
        failed_attempts_last_hour=1,
    )
    table = status_table([health, dataclasses.replace(health, name="n" * 500)], now)
    assert "\x1b" not in table and "\r" not in table and "\u202e" not in table
    lines = table.split("\n")
    assert len(lines) == 4  # header, two sinks, summary
    assert "a\\x1b[2Kb\\nc" in lines[1]
    assert "tenant\\u202ea" in lines[1]
    assert all(len(line) < 600 for line in lines)
