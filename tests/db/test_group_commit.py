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
