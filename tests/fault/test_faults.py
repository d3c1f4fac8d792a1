"""Fault injection against real ``air-relay serve`` processes: each test runs a scenario of
tests/fault/scenarios.py and prints its figures. Every event answered 202 must reach the sink
(at least once after a crash, exactly once where nothing crashed), and ingest must only ever
answer 202, or 503 with Retry-After, or not at all. The default run uses the short sizes;
``--run-slow`` adds the long variants (marked slow)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from tests.fault.figures import Figures, report
from tests.fault.lab import FaultLab, fault_lab
from tests.fault.scenarios import (
    DB_CRASH_NO_SPOOL_SIZES,
    DB_CRASH_SIZES,
    DB_DOWN_SIZES,
    GRACEFUL_SOCKET_SIZES,
    INSTANCES_SIZES,
    KILL9_SIZES,
    KILL9_SPOOL_SIZES,
    SINK_OUTAGE_SIZES,
    SOCKET_SIZES,
    SPOOL_OUTAGE_SIZES,
    Sizes,
    database_crash_under_load,
    database_down_at_startup,
    database_outage_spooled,
    kill9_under_load,
    kill9_while_spooling,
    lease_takeover,
    restart_on_a_passed_socket,
    several_instances,
    sigterm_in_flight,
    sink_outage,
    slow_send_keeps_its_lease,
    spool_full,
    torn_spool_record,
)


def sized(sizes: Sizes) -> Any:
    """Parametrize a test over a scenario's sizes: "short" always, the others marked slow."""
    params = [
        pytest.param(kwargs, id=name, marks=() if name == "short" else pytest.mark.slow)
        for name, kwargs in sizes.items()
    ]
    return pytest.mark.parametrize("size", params)


@pytest.fixture
async def lab() -> AsyncIterator[FaultLab]:
    async with fault_lab() as the_lab:
        yield the_lab


async def run(lab: FaultLab, scenario: Awaitable[Figures]) -> Figures:
    """Run a scenario, print its figures; on failure show the tail of every relay's log."""
    try:
        figures = await scenario
    except BaseException:
        print(lab.diagnostics())
        raise
    report(figures)
    return figures


@sized(KILL9_SIZES)
async def test_kill9_under_load_loses_no_accepted_event(
    lab: FaultLab, size: dict[str, Any]
) -> None:
    await run(lab, kill9_under_load(lab, **size))


@sized(SOCKET_SIZES)
async def test_restart_on_a_passed_socket_refuses_nothing(
    lab: FaultLab, size: dict[str, Any]
) -> None:
    await run(lab, restart_on_a_passed_socket(lab, **size))


@sized(GRACEFUL_SOCKET_SIZES)
async def test_sigterm_restart_on_a_passed_socket_refuses_nothing(
    lab: FaultLab, size: dict[str, Any]
) -> None:
    await run(lab, restart_on_a_passed_socket(lab, **size))


@sized(DB_CRASH_SIZES)
async def test_database_crash_under_load(lab: FaultLab, size: dict[str, Any]) -> None:
    await run(lab, database_crash_under_load(lab, **size))


@sized(DB_CRASH_NO_SPOOL_SIZES)
async def test_database_crash_under_load_without_spool(lab: FaultLab, size: dict[str, Any]) -> None:
    await run(lab, database_crash_under_load(lab, **size))


@sized(SPOOL_OUTAGE_SIZES)
async def test_database_outage_is_spooled_not_refused(lab: FaultLab, size: dict[str, Any]) -> None:
    await run(lab, database_outage_spooled(lab, **size))


@sized(KILL9_SPOOL_SIZES)
async def test_kill9_while_spooling_loses_and_duplicates_nothing(
    lab: FaultLab, size: dict[str, Any]
) -> None:
    await run(lab, kill9_while_spooling(lab, **size))


async def test_torn_spool_record_is_reported_not_replayed(lab: FaultLab) -> None:
    await run(lab, torn_spool_record(lab))


async def test_full_spool_answers_503(lab: FaultLab) -> None:
    await run(lab, spool_full(lab))


@sized(DB_DOWN_SIZES)
async def test_database_down_at_startup(lab: FaultLab, size: dict[str, Any]) -> None:
    await run(lab, database_down_at_startup(lab, **size))


@sized(SINK_OUTAGE_SIZES)
async def test_sink_outage_backlog_drains_in_order(lab: FaultLab, size: dict[str, Any]) -> None:
    await run(lab, sink_outage(lab, **size))


@sized(INSTANCES_SIZES)
async def test_several_instances_deliver_exactly_once(lab: FaultLab, size: dict[str, Any]) -> None:
    await run(lab, several_instances(lab, **size))


async def test_sigterm_finishes_in_flight_and_releases_the_rest(lab: FaultLab) -> None:
    await run(lab, sigterm_in_flight(lab))


async def test_lease_takeover_after_kill_during_hanging_send(lab: FaultLab) -> None:
    await run(lab, lease_takeover(lab))


async def test_slow_send_renews_its_lease(lab: FaultLab) -> None:
    await run(lab, slow_send_keeps_its_lease(lab))
