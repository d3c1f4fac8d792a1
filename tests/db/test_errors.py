"""Which database errors mean "unavailable" (503, retry later) and which are bugs (500 and an
error-level log line): a broken query must never hide behind "retry later" for ever."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from air_relay.db.embedded import EmbeddedPostgres
from tests.support import api_get, create_sink, post_event, wait_final, wait_until

EVENT = {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {"id": "c-1"}}


def errors(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event and e["log_level"] == "error"]


async def test_a_broken_query_is_a_500_with_an_error_log(
    relay: Any, db: asyncpg.Connection
) -> None:
    await db.execute("ALTER TABLE event_sinks RENAME TO event_sinks_elsewhere")
    with capture_logs() as logs:
        status, body = await api_get(relay, "/v1/event_sink")
        assert status == 500, body
        assert body["error"]["code"] == "internal_error"
        resp = await post_event(relay, EVENT)
        assert resp.status == 500, await resp.text()
    assert [e["path"] for e in errors(logs, "request_failed")] == [
        "/v1/event_sink",
        "/v1/air/events",
    ]
    assert not [e for e in logs if e["event"] == "database_unavailable"]


async def test_the_dispatcher_outlives_a_broken_claim_query(
    relay: Any, db: asyncpg.Connection, sink_server: Any
) -> None:
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    with capture_logs() as logs:
        await db.execute("ALTER TABLE deliveries RENAME TO deliveries_elsewhere")

        async def claim_failed_logged() -> bool:
            return bool(errors(logs, "claim_failed"))

        await wait_until(claim_failed_logged)
    await db.execute("ALTER TABLE deliveries_elsewhere RENAME TO deliveries")
    assert (await post_event(relay, EVENT)).status == 202
    await wait_final(db)
    assert len(await sink_server.wait_for(1)) == 1


def test_the_embedded_server_inherits_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "ingest-token-from-the-environment-0123456789"
    monkeypatch.setenv("AIR_RELAY_INGEST_TOKEN", secret)
    monkeypatch.setenv("AIR_RELAY_API_KEY", secret + "-api")
    server = EmbeddedPostgres(tmp_path, delete_on_stop=True)
    server.start()
    try:
        pid = int((tmp_path / "pgdata" / "postmaster.pid").read_text().split()[0])
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert secret.encode() not in environ
        assert b"PATH=" in environ  # it did get an environment, a cut-down one
        assert os.environ["AIR_RELAY_INGEST_TOKEN"] == secret  # the daemon's is put back
    finally:
        server.stop()


def test_a_rolled_back_conflict_is_worth_a_retry() -> None:
    from air_relay.db.pool import DB_UNAVAILABLE

    # Deadlocks and serialization failures roll the statement back: retrying succeeds.
    for exc in (asyncpg.DeadlockDetectedError(), asyncpg.SerializationError()):
        assert isinstance(exc, DB_UNAVAILABLE)
    for exc in (asyncpg.UndefinedTableError(), asyncpg.UniqueViolationError()):
        assert not isinstance(exc, DB_UNAVAILABLE)
