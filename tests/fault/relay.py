"""Real ``air-relay serve`` processes for the fault tests: their config, start, readiness,
kill -9 and SIGTERM (each in its own process group, logging JSON to a file), a Webhook sink
created through the API, and an RSS sampler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support import TENANT, deep_merge

INGEST_TOKEN = "fault-ingest-token"


API_KEY = "fault-api-key"


# What systemd does between fork and exec for a socket-activated service: the listening socket
# becomes fd 3, LISTEN_FDS=1 and LISTEN_PID=<the pid that execs>. argv: FD COMMAND...
SOCKET_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="air-relay")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def relay_command() -> list[str]:
    script = Path(sys.executable).parent / "air-relay"
    return [str(script)] if script.exists() else [sys.executable, "-m", "air_relay"]


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


def client_timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


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

    def start(self, listen_socket: socket.socket | None = None) -> None:
        """Start serve; with ``listen_socket``, socket-activated on it (as fd 3, LISTEN_FDS=1
        and LISTEN_PID) instead of binding its configured port."""
        assert not self.alive, f"{self.name} is already running"
        log = self.root / f"{self.name}.{len(self.logs) + 1}.log"
        self.logs.append(log)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIR_RELAY_", "LISTEN_"))}
        command = [*relay_command(), "serve", "--config", str(self.config_path)]
        passed: tuple[int, ...] = ()
        if listen_socket is not None:
            passed = (listen_socket.fileno(),)
            command = [sys.executable, "-c", SOCKET_ACTIVATE, str(passed[0]), *command]
        with log.open("wb") as out:
            # Own process group: kill -9 of the group leaves nothing behind.
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=env,
                start_new_session=True,
                pass_fds=passed,
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
                    async with http.get(f"{self.base_url}/readyz", timeout=client_timeout(2)) as r:
                        if r.status == 200:
                            return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise AssertionError(f"{self.name} not ready in {timeout} s:\n{self.tail()}")
                await asyncio.sleep(0.1)

    async def readyz(self) -> int | None:
        async with aiohttp.ClientSession() as http:
            try:
                async with http.get(f"{self.base_url}/readyz", timeout=client_timeout(5)) as r:
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
        http.post(f"{relay.base_url}/v1/event_sink", json=body, timeout=client_timeout(10)) as resp,
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
