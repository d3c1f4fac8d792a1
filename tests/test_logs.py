"""The JSON log set-up (``logs.configure_logging``) in a real process: one JSON object per line
as json.dumps writes it, in the order logged, nothing left behind at exit.

Each case runs in its own Python process: the configuration is global and caches loggers, so
it must not leak into the other tests' (which capture logs in this process)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap
from typing import Any

PRELUDE = """
import asyncio, datetime, logging, threading, sys
import structlog
from air_relay.logs import configure_logging
configure_logging("json", "info")
log = structlog.get_logger("test")
"""


class _AnyTime:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.endswith("Z") and "T" in other


ANY_TIME: Any = _AnyTime()


def run(script: str) -> tuple[int, list[dict[str, Any]]]:
    """Run ``script`` after the prelude: its exit code and its stderr as JSON lines (each line
    must be one JSON object)."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    lines = proc.stderr.decode().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise AssertionError(f"not a JSON log line: {line!r}\n{proc.stderr.decode()}") from exc
    return proc.returncode, records


def test_lines_keep_their_order_across_loggers_threads_and_loop_iterations() -> None:
    code, records = run(
        """
        async def main():
            log.info("one", n=1)
            logging.getLogger("aiohttp.test").warning("two")
            log.info("three", n=3)
            await asyncio.sleep(0)
            await asyncio.to_thread(log.info, "four", n=4)
            log.info("five", n=5)
        asyncio.run(main())
        log.info("six", n=6)
        """
    )
    assert code == 0
    assert [r["event"] for r in records] == ["one", "two", "three", "four", "five", "six"]
    assert records[0] == {"n": 1, "event": "one", "level": "info", "timestamp": ANY_TIME}
    assert records[1]["level"] == "warning"


def test_lines_are_written_when_the_process_ends_with_an_error() -> None:
    code, records = run(
        """
        async def main():
            log.info("last_words")
            raise SystemExit(3)
        asyncio.run(main())
        """
    )
    assert code == 3
    assert [r["event"] for r in records] == ["last_words"]


def test_lines_are_json_dumps_output() -> None:
    code, records = run(
        """
        async def main():
            log.info("big", n=2**70)
            log.info("surrogate", text="a\\ud800b")
            log.info("keys", mapping={1: "x"})
            log.info("when", at=datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc))
        asyncio.run(main())
        """
    )
    assert code == 0
    assert [r["event"] for r in records] == ["big", "surrogate", "keys", "when"]
    assert records[0]["n"] == 2**70
    assert records[1]["text"] == "a\ud800b"
    assert records[2]["mapping"] == {"1": "x"}
    assert records[3]["at"] == repr(datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC))


def test_lines_are_spelled_as_operators_grep_for_them() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + 'log.info("server_ready", port=1)'],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.stderr.decode().startswith('{"port": 1, "event": "server_ready", "level": "info"')
