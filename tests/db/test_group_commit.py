"""Group commit: callers that arrive together share one write; one item the write refuses
(not an outage) fails only its own caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from air_relay.db.batcher import GroupCommit


async def test_one_refused_item_fails_only_its_caller() -> None:
    calls: list[list[int]] = []

    async def write(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        await asyncio.sleep(0.01)
        if 13 in items:
            raise ValueError("the database refuses 13")
        return [i * 2 for i in items]

    batcher: GroupCommit[int, int] = GroupCommit(write, max_flushes=1)
    results = await asyncio.gather(
        *(batcher.submit(i) for i in (1, 2, 13, 4)), return_exceptions=True
    )
    assert results[:2] == [2, 4] and results[3] == 8
    assert isinstance(results[2], ValueError)
    # Together first, then, refused, one by one.
    assert calls == [[1, 2, 13, 4], [1], [2], [13], [4]]


async def test_an_outage_fails_the_whole_batch_without_retrying_each() -> None:
    calls: list[list[int]] = []

    async def write(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        raise ConnectionRefusedError("database down")

    batcher: GroupCommit[int, int] = GroupCommit(write, max_flushes=1)
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionRefusedError) for r in results)
    assert calls == [[1, 2, 3]]  # no item-by-item retry of an outage
    with pytest.raises(ConnectionRefusedError):
        await batcher.submit(4)
    assert calls == [[1, 2, 3], [4]]


async def test_a_caller_that_goes_away_does_not_stop_the_write_others_share() -> None:
    written: list[list[int]] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int]:
        started.set()
        await release.wait()
        written.append(list(items))
        return [i * 2 for i in items]

    batcher: GroupCommit[int, int] = GroupCommit(write, max_flushes=1)
    leaving = asyncio.create_task(batcher.submit(1))
    staying = asyncio.create_task(batcher.submit(2))
    await started.wait()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    release.set()
    assert await staying == 4
    assert written == [[1, 2]]
    assert await batcher.submit(3) == 6  # the batcher carries on


async def test_a_caller_woken_by_a_flush_that_submits_again_is_written() -> None:
    """The flush that wakes a caller ends in the same step; the caller's next submit must
    start a new one, not wait for it (it would wait for ever)."""

    async def write(items: Sequence[int]) -> list[int]:
        await asyncio.sleep(0)
        return list(items)

    batcher: GroupCommit[int, int] = GroupCommit(write, max_flushes=1)
    async with asyncio.timeout(10):  # awaited in this task: no hop through another
        for i in range(5):
            assert await batcher.submit(i) == i
