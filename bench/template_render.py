"""Benchmark: what a Webhook template costs, in the relay's process and through a template
worker. Prints, per preset, the time of one render in process (as presets render at send)
and of the same source as a custom template through a worker (IPC included); then a worker's
start, a create/update check of the catalog's examples, and the in-process source check of a
16 KiB template. Not a test: it prints figures; no network.

    .venv/bin/python -m bench.template_render --renders 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

from air_relay.events import catalog
from air_relay.sinks.template_worker import RenderRequest
from air_relay.sinks.template_workers import TemplateWorkers
from air_relay.sinks.templates import (
    PRESETS,
    check_source,
    delivery_context,
    render_preset,
)

EVENT = "TaskProcessingFailedEvent"
CONSOLE = "https://air.example.com"


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"median {statistics.median(ordered) * 1e3:.3f} ms  p99 {p99 * 1e3:.3f} ms"


def timed(call: Callable[[], object], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


async def timed_async(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        out.append(time.perf_counter() - started)
    return out


async def main(renders: int) -> None:
    envelope = json.dumps(catalog()[EVENT].example).encode()
    workers = TemplateWorkers()
    try:
        started = time.perf_counter()
        await workers.render(RenderRequest("{}", envelope, "id", None, None))
        print(f"worker start + first render: {(time.perf_counter() - started) * 1e3:.1f} ms")
        print(f"one render of {EVENT}, {renders} times:")
        for name, source in PRESETS.items():
            context = delivery_context(envelope, "id", None, CONSOLE)
            render_preset(name, context)  # compiled once, as in the relay
            local = timed(lambda n=name, c=context: render_preset(n, c), renders)
            request = RenderRequest(source, envelope, "id", None, CONSOLE)
            remote = await timed_async(lambda r=request: workers.render(r), renders)
            print(f"  {name:12} in process: {figures(local)}   via worker: {figures(remote)}")
        simple = '{"text": {{ (title ~ ": " ~ summary) | tojson }}}'
        checks = await timed_async(lambda: workers.check(simple, CONSOLE), 50)
        print(f"create/update check ({len(catalog())} examples): {figures(checks)}")
    finally:
        await workers.close()
    big = "{{ [" + "1," * 8000 + "] }}"  # a 16 KiB template, the most tokens it can hold
    for label, source in (("teams preset", PRESETS["teams"]), ("16 KiB worst case", big)):
        parsed = timed(lambda s=source: check_source(s), 20)
        print(f"source check in process, {label}: {figures(parsed)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=2000)
    asyncio.run(main(parser.parse_args().renders))
