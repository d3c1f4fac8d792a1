"""What bench/compare.py is made of: the events it sends, the helper processes (receiver, bare
handler, pgqueuer peer), ``air-relay serve`` processes on a database of their own, CPU and
RSS meters, wrk, and an open-loop fixed-rate load generator. Only 127.0.0.1 is contacted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import yaml

from air_relay.db.pool import create_pool
from tests.fault.relay import Relay
from tests.support import TENANT, create_database, deep_merge, free_port

ROOT = Path(__file__).resolve().parent.parent
INGEST_TOKEN = "bench-ingest-token"
API_KEY = "bench-api-key"
INGEST_HEADERS = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}
# The events the benchmarks send; both fit the AIR catalog exactly (an event that does not
# costs the relay a warning log line per event, which is not what is measured here).
EVENT_NAME = "TaskProcessingFailedEvent"
OTHER_EVENT_NAME = "CaseCreatedEvent"


def event_body(seq: int, sent_at: float | None = None) -> bytes:
    """An event; ``seq`` and the send time ride in string fields the receiver reads."""
    data = {
        "taskId": f"seq:{seq}",
        "taskDetailsUrl": f"/#/tasks/{seq}",
        "taskType": "Triage",
        "assetId": f"sent:{sent_at:.6f}" if sent_at is not None else "asset-1",
    }
    envelope = {"eventName": EVENT_NAME, "organizationId": 1, "data": data}
    return json.dumps(envelope, separators=(",", ":")).encode()


def pct(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


def pct_text(values: Sequence[float], p: float) -> str:
    value = pct(values, p)
    return "—" if value is None else f"{value:.1f}"


def machine_text() -> str:
    """The machine, the code and the date, for the record of a run."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cores = os.cpu_count()
    return f"{day}, commit {commit or 'unknown'}; {cores} cores ({model}), {memory:.0f} GiB"


# --- processes ----------------------------------------------------------------------------


class Helper:
    """A helper process (receiver, bare handler, peer) in its own session, logging to a file,
    ready when ``GET /ready`` answers."""

    def __init__(self, root: Path, name: str, module: str, args: Sequence[str]) -> None:
        self.root = root
        self.name = name
        self.port = free_port()
        self.cmd = [sys.executable, "-m", module, "--port", str(self.port), *args]
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60) -> Helper:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.base_url}/ready") as resp:
                        if resp.status == 200:
                            return self
                if time.monotonic() > deadline:
                    raise SystemExit(f"{self.name} not ready:\n{self.log.read_text()[-3000:]}")
                await asyncio.sleep(0.1)

    def rss_mb(self) -> float | None:
        return rss_mb(self.pid) if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    return None


def event_loop_of(pid: int) -> str:
    """The event loop process ``pid`` runs: uvloop when its extension is mapped."""
    with contextlib.suppress(OSError):
        if "uvloop" in Path(f"/proc/{pid}/maps").read_text():
            return "uvloop"
    return "asyncio"


class ReceiverClient:
    """Drives the receiver process (bench/receiver.py)."""

    def __init__(self, helper: Helper) -> None:
        self.helper = helper

    def url(self, name: str) -> str:
        return f"{self.helper.base_url}/hook/{name}"

    async def _call(self, method: str, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.helper.base_url}{path}") as resp,
        ):
            resp.raise_for_status()
            return await resp.json() if path.startswith("/stats") else None

    async def stats(self, name: str, latencies: bool = False) -> dict[str, Any]:
        everything = await self._call("GET", "/stats?latencies=1" if latencies else "/stats")
        empty = {"count": 0, "refused": 0, "first": None, "last": None, "distinct": 0}
        found: dict[str, Any] = everything.get(name, {**empty, "duplicates": 0, "timed": 0})
        return found

    async def count(self, name: str) -> int:
        return int((await self.stats(name))["count"])

    async def reset(self) -> None:
        await self._call("POST", "/reset")

    async def set_status(self, name: str, status: int) -> None:
        await self._call("POST", f"/status/{name}/{status}")


# --- PostgreSQL -----------------------------------------------------------------------------


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def checkpoint(admin_dsn: str) -> None:
    """Flush the previous phase's writes now, not in the middle of the next measurement."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        with contextlib.suppress(asyncpg.PostgresError):  # not a superuser: skip
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def postgres_pids(datadir: Path | None) -> list[int]:
    """The postmaster of ``datadir`` and all its children (backends, walwriter ...)."""
    if datadir is None:
        return []
    try:
        pid = int((datadir / "postmaster.pid").read_text().split()[0])
        main = psutil.Process(pid)
        return [pid, *(c.pid for c in main.children(recursive=True))]
    except (OSError, ValueError, IndexError, psutil.Error):
        return []


# --- air-relay serve --------------------------------------------------------------------------


def relay_config(dsn: str, state_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """config.example.yaml as shipped (every default), pointed at ``dsn`` and at a receiver
    on 127.0.0.1, with bench credentials; ``overrides`` deep-merged over it (``--set``)."""
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    cfg["server"]["port"] = free_port()
    cfg["database"]["dsn"] = dsn
    cfg["state_dir"] = str(state_dir)
    cfg["ingest"]["tokens"] = [{"token": INGEST_TOKEN, "tenant_id": TENANT}]
    cfg["api"]["keys"] = [{"key": API_KEY, "tenant_ids": ["*"]}]
    cfg["delivery"]["allow_private_destinations"] = True  # the receiver is on 127.0.0.1
    return deep_merge(cfg, overrides)


@dataclass
class RelayLab:
    """``air-relay serve`` process(es) on one fresh database, and a small pool to it."""

    dsn: str
    database: str
    relays: list[Relay]
    pool: asyncpg.Pool
    sinks: list[str] = field(default_factory=list)

    @property
    def ingest_url(self) -> str:
        return f"{self.relays[0].base_url}/v1/air/events"

    @property
    def pids(self) -> list[int]:
        return [r.pid for r in self.relays if r.alive]

    def rss_mb(self) -> float | None:
        sizes = [kb / 1024 for r in self.relays if (kb := r.rss_kb()) is not None]
        return max(sizes) if sizes else None

    async def create_sink(self, url: str, events: list[str] | None = None) -> str:
        """A Webhook sink through the management API; its id."""
        body: dict[str, Any] = {
            "tenant_id": TENANT,
            "name": f"bench sink {len(self.sinks) + 1}",
            "description": "bench/compare.py",
            "event_sink_args": {"Webhook": {"url": url}},
        }
        if events is not None:
            body["events"] = events
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http,
            http.post(f"{self.relays[0].base_url}/v1/event_sink", json=body) as resp,
        ):
            if resp.status != 200:
                raise SystemExit(f"creating a sink failed: {resp.status} {await resp.text()}")
            sink_id: str = (await resp.json())["event_sink"]["id"]
        self.sinks.append(sink_id)
        return sink_id

    async def count(self, status: str, sink_id: str | None = None) -> int:
        n: int = await self.pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE status = $1"
            " AND ($2::uuid IS NULL OR event_sink_id = $2::uuid)",
            status,
            sink_id,
        )
        return n

    async def stop(self) -> None:
        """SIGTERM every serve (each drains and exits) and close the pool; idempotent."""
        for relay in self.relays:
            if relay.alive:
                relay.sigterm()
        for relay in self.relays:
            if relay.alive:
                await relay.wait_exit(20)
            relay.close()
        if not self.pool.is_closing():
            await self.pool.close()


@contextlib.asynccontextmanager
async def relay_lab(
    root: Path, admin_dsn: str, tag: str, overrides: dict[str, Any], instances: int = 1
) -> AsyncIterator[RelayLab]:
    """``instances`` serve processes on a new database ``bench_<tag>``, stopped (SIGTERM) and
    the database dropped afterwards."""
    database = f"bench_{tag.replace('-', '_')}"
    dsn = await create_database(admin_dsn, database)
    # The relay's own pool set-up (its jsonb codec), for its repository functions.
    pool = await create_pool(dsn, 1, 2)
    lab = RelayLab(dsn, database, [], pool)
    try:
        for i in range(instances):
            config = relay_config(dsn, root / f"state-{tag}-{i + 1}", overrides)
            relay = Relay(root, f"serve-{tag}-{i + 1}", config)
            lab.relays.append(relay)
            relay.start()
            await relay.wait_ready()
        yield lab
    finally:
        await lab.stop()
        await drop_database(admin_dsn, database)


# --- meters -----------------------------------------------------------------------------------


def _cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            out[pid] = times.user + times.system
    return out


def _machine_busy() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle


class CpuMeter:
    """CPU used by groups of processes over a window, in % of one core (200 = both of two
    cores), plus the whole machine's; "others" is what no group accounts for (other work on
    a shared machine, the kernel)."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._machine = 0.0
        self._t0 = 0.0

    def start(self) -> CpuMeter:
        self._start = {name: _cpu_seconds(pids()) for name, pids in self.groups.items()}
        self._machine = _machine_busy()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-6)
        out: dict[str, float] = {}
        for name, pids in self.groups.items():
            before = self._start.get(name, {})
            now = _cpu_seconds(pids())
            used = sum(t - before.get(pid, 0.0) for pid, t in now.items())
            out[name] = 100 * used / wall
        out["machine"] = 100 * (_machine_busy() - self._machine) / wall
        out["others"] = max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine"))
        return out


def cpu_text(cpu: dict[str, float]) -> str:
    parts = [f"{name} {value:.0f}" for name, value in cpu.items() if name != "machine"]
    return ", ".join(parts) + f" (machine {cpu['machine']:.0f} of {100 * (os.cpu_count() or 1)})"


@dataclass
class DbUse:
    commits: int  # transactions committed in the phase's database
    wal_bytes: int  # WAL written by the whole server
    wal_fsyncs: int  # WAL fsyncs of the whole server (PostgreSQL 18's pg_stat_io)

    def per(self, n: int, what: str) -> str:
        if n <= 0:
            return "db: nothing done"
        return (
            f"db per {what}: {self.commits / n:.2f} commits, {self.wal_fsyncs / n:.2f} WAL"
            f" fsyncs, {self.wal_bytes / n / 1024:.1f} kB WAL"
        )


class DbMeter:
    """Commits of one database and the server's WAL over a window. PostgreSQL publishes a
    backend's counters with a lag (up to seconds when it goes idle), but at once when it
    exits: stop the processes under test before ``stop``, and it is exact enough."""

    def __init__(self, admin_dsn: str, database: str) -> None:
        self.admin_dsn = admin_dsn
        self.database = database
        self._start = DbUse(0, 0, 0)

    async def _read(self) -> DbUse:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            commits = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", self.database
            )
            wal = await conn.fetchval("SELECT wal_bytes FROM pg_stat_wal")
            fsyncs = 0
            with contextlib.suppress(asyncpg.PostgresError):  # before PostgreSQL 18
                fsyncs = await conn.fetchval(
                    "SELECT coalesce(sum(fsyncs), 0) FROM pg_stat_io WHERE object = 'wal'"
                )
            return DbUse(int(commits or 0), int(wal or 0), int(fsyncs or 0))
        finally:
            await conn.close()

    async def start(self) -> DbMeter:
        self._start = await self._read()
        return self

    async def stop(self) -> DbUse:
        end = await self._read()
        return DbUse(
            end.commits - self._start.commits,
            end.wal_bytes - self._start.wal_bytes,
            end.wal_fsyncs - self._start.wal_fsyncs,
        )


# --- load -------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    requests_per_second: float
    non_2xx: int
    socket_errors: str
    latency: str
    cpu: dict[str, float]


def _wrk_script(root: Path, body: bytes, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script = root / "post.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit(
            "wrk is not installed (Debian: apt-get install wrk); see docs/benchmarks.md"
        )
    return found


async def run_wrk(
    root: Path,
    url: str,
    headers: dict[str, str],
    *,
    seconds: float,
    connections: int,
    threads: int,
    meter: CpuMeter | None = None,
) -> WrkResult:
    """wrk POSTing one event with ``headers``; CPU is metered over the run less its first and
    last half second (wrk has exited by the time its output can be read)."""
    script = _wrk_script(root, event_body(0), headers)
    proc = await asyncio.create_subprocess_exec(
        wrk_path(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "-s",
        str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    cpu: dict[str, float] = {}
    if meter is not None:
        meter.groups["wrk"] = lambda: [proc.pid]
        await asyncio.sleep(0.5)
        meter.start()
        await asyncio.sleep(max(seconds - 1.0, 0.1))
        cpu = meter.stop()
    out = (await proc.communicate())[0].decode()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    if rate is None or done is None:
        raise SystemExit(f"wrk gave no rate:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    return WrkResult(
        requests=int(done.group(1)),
        requests_per_second=float(rate.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
        latency=f"avg {latency.group(1)}, max {latency.group(3)}" if latency else "",
        cpu=cpu,
    )


@dataclass
class LoadResult:
    sent: int
    statuses: Counter[int | str]
    seconds: float
    max_lag_ms: float  # how late the generator started a request, at worst

    @property
    def accepted(self) -> int:
        return self.statuses.get(202, 0)


async def fixed_rate(url: str, rate: float, seconds: float, *, first_seq: int = 0) -> LoadResult:
    """POST ``rate`` events/s for ``seconds``, open loop: each request starts on its schedule
    whatever the earlier ones are doing. The send time in each event is the scheduled one, so
    a generator or server that falls behind shows as latency (no coordinated omission)."""
    total = round(rate * seconds)
    statuses: Counter[int | str] = Counter()
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=1024)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector, headers=INGEST_HEADERS, timeout=timeout
    ) as http:

        async def post(body: bytes) -> None:
            try:
                async with http.post(url, data=body) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1

        wall0, mono0 = time.time(), time.monotonic()
        max_lag = 0.0
        for i in range(total):
            due = i / rate
            delay = mono0 + due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            task = asyncio.create_task(post(event_body(first_seq + i, wall0 + due)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elapsed = time.monotonic() - mono0
        if tasks:
            await asyncio.gather(*tasks)
    return LoadResult(total, statuses, elapsed, max_lag * 1000)
