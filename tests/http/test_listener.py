"""Slow clients and the connection cap, against the relay app served by ``GuardedSite`` on
127.0.0.1 over raw sockets: a slowloris (headers trickled, or nothing sent) and a trickled body
are disconnected without an answer, a body at a steady rate and an idle kept-alive connection
are not, and connections over ``server.max_connections`` are closed at once while the open
ones carry on."""

from __future__ import annotations

import asyncio
import json
import resource
from typing import Any

import pytest

from air_relay.runtime import ensure_file_limit
from tests.support import (
    GuardedRelay,
    GuardedStarter,
    make_config,
    read_response,
    request_head,
    wait_until,
)

# Short clocks, so a test sees a slow client cut; long enough for any honest request here.
LIMITS = {
    "header_timeout_seconds": 0.5,
    "body_timeout_seconds": 0.5,
    "body_min_bytes_per_second": 100,
}
# How long a test waits for a disconnection that must come (far above the clocks above).
PATIENCE = 15.0
EVENT = json.dumps(
    {
        "eventName": "CaseCreatedEvent",
        "organizationId": 0,
        "data": {"id": "C-1", "name": "slow", "ownerUser": "analyst"},
    }
).encode()


@pytest.fixture
def start_relay(start_guarded: GuardedStarter) -> GuardedStarter:
    """start_guarded with this module's short clocks unless a test gives its own."""

    async def start(**server: Any) -> GuardedRelay:
        return await start_guarded(**{**LIMITS, **server})

    return start


async def closed_without_answer(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection having sent nothing."""
    try:
        data = await asyncio.wait_for(reader.read(), PATIENCE)
    except ConnectionResetError:
        return True
    return data == b""


async def trickle(writer: asyncio.StreamWriter, data: bytes, chunk: int, pause: float) -> None:
    """Send ``data`` ``chunk`` bytes at a time, until it is sent or the server closes."""
    try:
        for start in range(0, len(data), chunk):
            writer.write(data[start : start + chunk])
            await writer.drain()
            await asyncio.sleep(pause)
    except ConnectionError:
        pass


# --- slow clients ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["trickled headers", "silent"])
async def test_a_slowloris_is_disconnected(start_relay: GuardedStarter, style: str) -> None:
    relay = await start_relay()
    reader, writer = await relay.connect()
    # One byte every 50 ms: the request line and headers take far longer than the clock.
    sender = asyncio.create_task(
        trickle(writer, request_head(len(EVENT)) if style != "silent" else b"", 1, 0.05)
    )
    assert await closed_without_answer(reader)
    sender.cancel()
    writer.close()
    assert relay.counter("air_relay_http_slow_connections_closed_total", phase="headers") == 1


async def test_a_slow_body_is_disconnected(start_relay: GuardedStarter, db: Any) -> None:
    relay = await start_relay()
    reader, writer = await relay.connect()
    writer.write(request_head(len(EVENT)))
    # 10 bytes a second, a tenth of body_min_bytes_per_second.
    sender = asyncio.create_task(trickle(writer, EVENT, 1, 0.1))
    assert await closed_without_answer(reader)
    sender.cancel()
    writer.close()
    assert relay.counter("air_relay_http_slow_connections_closed_total", phase="body") == 1
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_a_body_at_a_steady_rate_is_not_cut(start_relay: GuardedStarter, db: Any) -> None:
    relay = await start_relay()
    reader, writer = await relay.connect()
    # Padding makes the body take about 2 s at 1,000 bytes a second: four times the base
    # body_timeout, at ten times the minimum rate.
    body = EVENT[:-1] + b', "padding": "' + b"x" * 2000 + b'"}'
    writer.write(request_head(len(body)))
    await trickle(writer, body, 100, 0.1)
    status, answer = await read_response(reader)
    assert status == 202, answer
    writer.close()
    assert await db.fetchval("SELECT count(*) FROM events") == 1
    assert relay.counter("air_relay_http_slow_connections_closed_total", phase="body") == 0


async def test_an_idle_kept_alive_connection_is_not_a_slowloris(
    start_relay: GuardedStarter,
) -> None:
    relay = await start_relay()
    reader, writer = await relay.connect()
    for _ in range(2):
        writer.write(request_head(len(EVENT)) + EVENT)
        status, answer = await read_response(reader)
        assert status == 202, answer
        # Idle for twice the header clock: the clock starts at the next request's first byte.
        await asyncio.sleep(2 * LIMITS["header_timeout_seconds"])
    # The next request trickled: cut like any slowloris.
    sender = asyncio.create_task(trickle(writer, request_head(len(EVENT)), 1, 0.05))
    assert await closed_without_answer(reader)
    sender.cancel()
    writer.close()


async def test_requests_on_a_kept_alive_connection_outlast_the_header_clock(
    start_relay: GuardedStarter,
) -> None:
    """The header clock of each request is its own: requests one after another on one
    connection for three times the clock, each sent in two parts, are all answered."""
    relay = await start_relay()
    reader, writer = await relay.connect()
    loop = asyncio.get_running_loop()
    until = loop.time() + 3 * LIMITS["header_timeout_seconds"]
    answered = 0
    while loop.time() < until:
        head = request_head(len(EVENT))
        writer.write(head[:10])
        await asyncio.sleep(LIMITS["header_timeout_seconds"] / 5)
        writer.write(head[10:] + EVENT)
        status, answer = await read_response(reader)
        assert status == 202, answer
        answered += 1
    writer.close()
    assert answered >= 3
    assert relay.counter("air_relay_http_slow_connections_closed_total", phase="headers") == 0


# --- the connection cap ----------------------------------------------------------------------


async def test_connections_over_the_cap_are_refused_and_open_ones_carry_on(
    start_relay: GuardedStarter,
) -> None:
    # A header clock longer than the test, so the idle connections hold their slots.
    relay = await start_relay(max_connections=3, header_timeout_seconds=60)
    client_reader, client = await relay.connect()
    client.write(request_head(len(EVENT)) + EVENT)
    assert (await read_response(client_reader))[0] == 202
    idle = [await relay.connect() for _ in range(2)]
    await wait_until(lambda: _is(relay.site.open_connections, 3))

    for _ in range(3):
        reader, writer = await relay.connect()  # the kernel accepts; the relay closes at once
        assert await closed_without_answer(reader)
        writer.close()
    assert relay.counter("air_relay_http_connections_refused_total") == 3
    assert relay.counter("air_relay_http_connections") == 3

    # The connection already open is served as before.
    client.write(request_head(len(EVENT)) + EVENT)
    assert (await read_response(client_reader))[0] == 202

    # A slot that frees up is taken by the next connection.
    idle[0][1].close()
    await wait_until(lambda: _is(relay.site.open_connections, 2))
    reader, writer = await relay.connect()
    writer.write(request_head(len(EVENT)) + EVENT)
    assert (await read_response(reader))[0] == 202
    for _, w in [idle[1], (reader, writer), (client_reader, client)]:
        w.close()


async def _is(value: int, expected: int) -> bool:
    return value == expected


def test_serve_raises_the_open_file_limit_to_fit_max_connections() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cfg = make_config(server={"max_connections": 3000})
    if hard != resource.RLIM_INFINITY and hard < 4000:
        pytest.skip(f"the hard open-file limit ({hard}) is below what the test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        ensure_file_limit(cfg)
        raised, still_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert still_hard == hard
    assert 3000 < raised < 4000  # what it needs, not all the hard limit allows
