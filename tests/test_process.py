"""``air-relay serve`` as a real process: embedded database, an event through curl, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import SinkServer, create_webhook_sink_over_http

ROOT = Path(__file__).resolve().parent.parent
INGEST = "process-ingest-token"
API = "process-api-key"


def relay_command() -> list[str]:
    script = Path(sys.executable).parent / "air-relay"
    return [str(script)] if script.exists() else [sys.executable, "-m", "air_relay"]


async def read_until(stream: asyncio.StreamReader, event: str, lines: list[str]) -> dict[str, Any]:
    while True:
        raw = await asyncio.wait_for(stream.readline(), timeout=60)
        if not raw:
            raise AssertionError("serve exited early:\n" + "".join(lines))
        line = raw.decode()
        lines.append(line)
        try:
            record: dict[str, Any] = json.loads(line)  # every line is one JSON object
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}; before it:\n{''.join(lines)}")
        if record.get("event") == event:
            return record


async def post_with_curl(url: str, body: str) -> tuple[int, str]:
    if shutil.which("curl") is None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url,
                data=body,
                headers={"Authorization": f"Bearer {INGEST}", "Content-Type": "application/json"},
            ) as resp,
        ):
            return resp.status, await resp.text()
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        url,
        "-H",
        f"Authorization: Bearer {INGEST}",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    text, _, code = out.decode().rpartition("\n")
    return int(code), text


async def start_serve(tmp_path: Path, port: int) -> asyncio.subprocess.Process:
    """``air-relay serve`` with the example config on ``port``, the embedded database under
    ``tmp_path``, and its log on stderr."""
    config = (ROOT / "config.example.yaml").read_text()
    config = config.replace("port: 8080", f"port: {port}")
    # The receiver is on 127.0.0.1, which the example config's SSRF guard refuses.
    assert "allow_private_destinations: false" in config
    config = config.replace("allow_private_destinations: false", "allow_private_destinations: true")
    (tmp_path / "config.yaml").write_text(config)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIR_RELAY_INGEST_TOKEN": INGEST,
        "AIR_RELAY_API_KEY": API,
        "AIR_RELAY_STATE_DIR": str(tmp_path / "state"),
    }
    return await asyncio.create_subprocess_exec(
        *relay_command(), "serve", "--config", str(tmp_path / "config.yaml"),
        cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


@dataclass
class Serving:
    """A serve process from ``serving``: its address once ready; its whole log and exit code
    once stopped."""

    base: str = ""
    lines: list[str] = field(default_factory=list)
    log: str = ""
    code: int | None = None

    @property
    def events(self) -> list[str]:
        return [json.loads(line)["event"] for line in self.log.splitlines() if line.strip()]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, port: int) -> AsyncIterator[Serving]:
    """``start_serve``, waited for until it serves; afterwards SIGTERM (unless it has exited)
    and its log read to the end."""
    proc = await start_serve(tmp_path, port)
    assert proc.stderr is not None
    run = Serving()
    try:
        ready = await read_until(proc.stderr, "server_ready", run.lines)
        run.base = ready["address"]
        yield run
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), timeout=60)
        run.code = await asyncio.wait_for(proc.wait(), timeout=60)
        run.log = "".join(run.lines) + rest.decode()


async def test_serve_process_end_to_end(
    tmp_path: Path, sink_server: SinkServer, unused_tcp_port: int
) -> None:
    async with serving(tmp_path, unused_tcp_port) as run:
        base = run.base
        assert base == f"http://127.0.0.1:{unused_tcp_port}"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API}"}) as http:
            await create_webhook_sink_over_http(
                http, base, sink_server.url(), "receiver", "local receiver"
            )
            event = {
                "eventName": "CaseCreatedEvent",
                "organizationId": 1,
                "data": {"id": "case-1", "name": "Case", "ownerUser": "alice"},
            }
            status, text = await post_with_curl(f"{base}/v1/air/events", json.dumps(event))
            assert status == 202, text
            assert json.loads(text)["deliveries"] == 1
            (got,) = await sink_server.wait_for(1, timeout=20)
            assert got.json() == event
            assert (await http.get(f"{base}/readyz")).status == 200
    log, code, events = run.log, run.code, run.events
    assert code == 0, log
    for name in ("embedded_database_started", "event_received", "shutdown_complete"):
        assert name in events
    assert INGEST not in log and API not in log


@pytest.mark.parametrize("bad", ["nonsense_key: 1\n", "server:\n  port: eighty\n"])
async def test_serve_refuses_bad_config(tmp_path: Path, bad: str) -> None:
    (tmp_path / "bad.yaml").write_text(bad)
    proc = await asyncio.create_subprocess_exec(
        *relay_command(),
        "serve",
        "--config",
        str(tmp_path / "bad.yaml"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert (b"nonsense_key" if "nonsense" in bad else b"server.port") in err


async def test_serve_exits_1_when_the_database_refuses_the_dsn(
    tmp_path: Path, server_dsn: str, unused_tcp_port: int
) -> None:
    from tests.support import with_database

    dsn = with_database(server_dsn, "no_such_database")
    config = (
        (ROOT / "config.example.yaml").read_text().replace("port: 8080", f"port: {unused_tcp_port}")
    )
    (tmp_path / "config.yaml").write_text(config)
    env = {
        "PATH": "/usr/bin:/bin",
        "AIR_RELAY_INGEST_TOKEN": INGEST,
        "AIR_RELAY_API_KEY": API,
        "AIR_RELAY_DATABASE_DSN": dsn,
    }
    proc = await asyncio.create_subprocess_exec(
        *relay_command(),
        "serve",
        "--config",
        str(tmp_path / "config.yaml"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 1
    (line,) = [json.loads(x) for x in err.decode().splitlines() if "database_refused" in x]
    assert "no_such_database" in line["error"]


async def test_a_dead_embedded_database_is_restarted_and_nothing_is_lost(
    tmp_path: Path, sink_server: SinkServer, unused_tcp_port: int
) -> None:
    # kill -9 of the embedded PostgreSQL while serve runs: events arriving meanwhile are
    # spooled (202), the server is restarted by serve, and every event is delivered.
    async with serving(tmp_path, unused_tcp_port) as run:
        base = run.base
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API}"}) as http:
            await create_webhook_sink_over_http(http, base, sink_server.url(), "receiver")
            pid_file = tmp_path / "state" / "pgdata" / "postmaster.pid"
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            for n in range(5):
                event = {"eventName": "CaseCreatedEvent", "organizationId": 1,
                         "data": {"id": f"case-{n}"}}  # fmt: skip
                status, text = await post_with_curl(f"{base}/v1/air/events", json.dumps(event))
                assert status == 202, text
            got = await sink_server.wait_for(5, timeout=60)
            assert sorted(r.json()["data"]["id"] for r in got) == [f"case-{n}" for n in range(5)]
    log, events = run.log, run.events
    assert "embedded_database_died" in events, log
    assert "embedded_database_restarted" in events, log
