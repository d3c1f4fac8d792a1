"""Benchmark: events/s one ``air-relay serve`` process accepts and delivers.

Starts a local Webhook receiver and ``air-relay serve`` (embedded PostgreSQL in a temporary
state_dir, or --dsn), creates one Webhook sink, POSTs --events events with --concurrency
connections, and prints the accept rate, ingest latency percentiles and the end-to-end
delivery rate. Only 127.0.0.1 is used. Not a test: it prints figures.

    .venv/bin/python -m bench.ingest_load --events 5000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support import create_webhook_sink_over_http, free_port

ROOT = Path(__file__).resolve().parent.parent
INGEST = "bench-ingest-token"
API = "bench-api-key"
EVENT = json.dumps(
    {
        "eventName": "TaskProcessingFailedEvent",
        "organizationId": 1,
        "data": {"taskId": "t", "taskDetailsUrl": "/#/t", "taskType": "Triage", "assetId": "a"},
    }
).encode()


async def start_receiver() -> tuple[web.AppRunner, str, list[float]]:
    arrivals: list[float] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        arrivals.append(time.monotonic())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook", arrivals


async def start_relay(tmp: Path, port: int, dsn: str | None) -> asyncio.subprocess.Process:
    config = (ROOT / "config.example.yaml").read_text().replace("port: 8080", f"port: {port}")
    # The receiver is on 127.0.0.1, which the example config's SSRF guard refuses.
    config = config.replace("allow_private_destinations: false", "allow_private_destinations: true")
    (tmp / "config.yaml").write_text(config)
    env = dict(
        os.environ,
        AIR_RELAY_INGEST_TOKEN=INGEST,
        AIR_RELAY_API_KEY=API,
        AIR_RELAY_STATE_DIR=str(tmp / "state"),
    )
    if dsn:
        env["AIR_RELAY_DATABASE_DSN"] = dsn
    script = Path(sys.executable).parent / "air-relay"
    proc = await asyncio.create_subprocess_exec(
        str(script),
        "serve",
        "--config",
        str(tmp / "config.yaml"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=60)
        if not line:
            raise SystemExit("air-relay serve exited before it was ready")
        if b'"server_ready"' in line:
            break
    asyncio.get_running_loop().create_task(proc.stderr.read())  # keep the pipe drained
    return proc


async def fire(base: str, total: int, concurrency: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[None] = asyncio.Queue()
    for _ in range(total):
        queue.put_nowait(None)
    headers = {"Authorization": f"Bearer {INGEST}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                queue.get_nowait()
                started = time.monotonic()
                async with http.post(f"{base}/v1/air/events", data=EVENT) as resp:
                    await resp.read()
                    if resp.status != 202:
                        errors += 1
                latencies.append(time.monotonic() - started)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - started, latencies, errors


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--dsn", default=None, help="use this PostgreSQL instead of the embedded one"
    )
    args = parser.parse_args()

    receiver, hook_url, arrivals = await start_receiver()
    with tempfile.TemporaryDirectory(prefix="air-relay-bench-") as tmpdir:
        port = free_port()
        proc = await start_relay(Path(tmpdir), port, args.dsn)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API}"}) as http:
                await create_webhook_sink_over_http(http, base, hook_url, "bench")
            await fire(base, 200, 8)  # warm-up
            await asyncio.sleep(1)
            arrivals.clear()
            started = time.monotonic()
            elapsed, latencies, errors = await fire(base, args.events, args.concurrency)
            deadline = time.monotonic() + 120
            while len(arrivals) < args.events and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            delivered_in = (arrivals[-1] - started) if arrivals else float("nan")
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        await receiver.cleanup()

    qs = statistics.quantiles(latencies, n=100)
    print(f"events sent          {args.events} with {args.concurrency} connections")
    print(f"accepted (202)       {args.events - errors}, errors {errors}")
    print(f"ingest rate          {args.events / elapsed:,.0f} events/s ({elapsed:.2f} s)")
    print(
        f"ingest latency ms    p50 {qs[49] * 1000:.1f}  p95 {qs[94] * 1000:.1f}  "
        f"p99 {qs[98] * 1000:.1f}"
    )
    print(
        f"delivered            {len(arrivals)} in {delivered_in:.2f} s "
        f"({len(arrivals) / delivered_in:,.0f} deliveries/s end to end)"
    )
    print(f"exit code of serve   {proc.returncode}")


if __name__ == "__main__":
    asyncio.run(main())
