"""Send slots: never more sends than slots; a free slot goes to the sink sending least, in
claim order within a sink; a delivery cancelled while it waits (shutdown) never keeps one."""

from __future__ import annotations

import asyncio
import uuid

from air_relay.delivery.send_slots import SendSlots

SLOW, FAST = uuid.uuid4(), uuid.uuid4()


async def test_a_free_slot_goes_to_the_sink_sending_least_then_in_claim_order() -> None:
    slots = SendSlots(2)
    started: list[str] = []

    async def send(sink: uuid.UUID, name: str) -> None:
        await slots.acquire(sink)
        started.append(name)

    await slots.acquire(SLOW)
    await slots.acquire(SLOW)  # both slots sending to the slow sink
    # Claimed ahead: three more for the slow sink, then one for another sink.
    waiting = [asyncio.create_task(send(SLOW, f"slow-{i}")) for i in range(3)]
    waiting.append(asyncio.create_task(send(FAST, "fast")))
    await asyncio.sleep(0)
    assert started == []  # no slot free
    slots.release(SLOW)
    await asyncio.sleep(0)
    assert started == ["fast"]  # claimed last, but its sink sends nothing
    slots.release(SLOW)
    slots.release(FAST)
    await asyncio.sleep(0)
    assert started == ["fast", "slow-0", "slow-1"]  # two slots: the slow ones in order
    slots.release(SLOW)
    await asyncio.gather(*waiting)
    assert started[-1] == "slow-2"


async def test_a_delivery_cancelled_while_waiting_keeps_no_slot() -> None:
    slots = SendSlots(1)
    await slots.acquire(SLOW)
    gone = asyncio.create_task(slots.acquire(SLOW))
    after = asyncio.create_task(slots.acquire(FAST))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    slots.release(SLOW)
    await asyncio.wait_for(after, 1)  # the slot went to the next waiting, not to the gone one
    assert gone.cancelled()


async def test_a_slot_handed_to_a_task_cancelled_before_it_ran_is_passed_on() -> None:
    slots = SendSlots(1)
    await slots.acquire(SLOW)
    first = asyncio.create_task(slots.acquire(SLOW))
    second = asyncio.create_task(slots.acquire(SLOW))
    await asyncio.sleep(0)
    slots.release(SLOW)  # hands the slot to ``first``, which has not run yet
    first.cancel()
    await asyncio.wait_for(second, 1)
    assert first.cancelled()
    # One slot, held by ``second``: nothing else gets in until it is released.
    third = asyncio.create_task(slots.acquire(FAST))
    await asyncio.sleep(0.01)
    assert not third.done()
    slots.release(SLOW)
    await asyncio.wait_for(third, 1)
