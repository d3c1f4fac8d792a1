"""Fault-injection figures: runs the scenarios of tests/fault/scenarios.py and prints a table.

Each scenario starts real ``air-relay serve`` processes against a private PostgreSQL that it
crashes and restarts (tests/fault/), a counting Webhook sink on 127.0.0.1, and an
ingest load; it checks what the test checks and reports, per fault: events sent, accepted
(202), rejected (503 + Retry-After), connection errors, delivered, delivered without a 202,
duplicated, the highest RSS of the serve processes, and notes. Only 127.0.0.1 is used.

    .venv/bin/python -m bench.faults                        # every scenario, short sizes
    .venv/bin/python -m bench.faults --size long            # the long sizes (several minutes)
    .venv/bin/python -m bench.faults kill9 sink-outage --set events=2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from tests.fault.figures import TABLE_HEADER, Figures, table_row
from tests.fault.lab import fault_lab
from tests.fault.scenarios import SCENARIOS


def parse_setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)  # numbers, lists ([1, 2, 5]), true/false
    except ValueError:
        value = raw
    return key, value


async def run_one(name: str, size: str, settings: dict[str, Any]) -> tuple[Figures | None, str]:
    scenario, sizes = SCENARIOS[name]
    kwargs = {**sizes.get(size, sizes["short"]), **settings}
    started = time.monotonic()
    async with fault_lab() as lab:
        try:
            return await scenario(lab, **kwargs), ""
        except AssertionError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "assertion failed"
            print(lab.diagnostics(), file=sys.stderr)
            took = time.monotonic() - started
            return None, f"| {name} | FAILED after {took:.0f} s: {first} |"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"any of: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--size", choices=["short", "long"], default="short")
    parser.add_argument(
        "--set",
        dest="settings",
        type=parse_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario argument (events, rate, outage, ...)",
    )
    args = parser.parse_args()
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    settings = dict(args.settings)

    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    rows: list[str] = []
    failed = 0
    for name in names:
        figures, failure = await run_one(name, args.size, settings)
        row = table_row(figures) if figures else failure
        failed += figures is None
        rows.append(row)
        print(row, flush=True)
    print(f"\n{TABLE_HEADER}")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
