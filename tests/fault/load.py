"""The ingest load: numbered AIR events posted at a rate, every answer recorded (202, 503 with
Retry-After, or no answer), and the check that ingest kept its contract under faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp

from tests.fault.relay import INGEST_TOKEN, client_timeout

EVENT_NAME = "TaskProcessingFailedEvent"


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
                f"{base}/v1/air/events", data=event_body(run, seq), timeout=client_timeout(timeout)
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
