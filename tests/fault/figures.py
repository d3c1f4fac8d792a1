"""What a fault scenario reports: order measures (inversions, longest in-order run) and the
figures row (sent, accepted, rejected, delivered, duplicated, RSS) that bench/faults.py prints."""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tests.fault.load import LoadResult
from tests.fault.relay import RssSampler
from tests.fault.sink import CountingSink


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
