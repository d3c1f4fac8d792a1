"""The template workers: custom templates render in child processes with hard limits (memory,
CPU, wall clock), a worker that meets one is killed and replaced, the relay answers while a
template renders, and a template that would exhaust it is refused at create or ends ``dead``
with ``template_error`` at send. Real worker processes throughout."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from air_relay.http.state import TEMPLATES
from air_relay.sinks.template_worker import MEMORY_LIMIT_MIB, RenderRequest
from air_relay.sinks.template_workers import (
    CHECK_SECONDS,
    TemplateWorkers,
    WorkersUnavailable,
)
from air_relay.sinks.templates import RenderFailed, example_context, render
from tests.support import (
    ADMIN_KEY,
    CATALOG,
    TENANT,
    SinkServer,
    audit_rows,
    auth,
    create_sink,
    post_event,
    wait_final,
    wait_until,
)

FIELD = "event_sink_args.Webhook.template"
EXAMPLE = CATALOG[3]["example"]  # TaskProcessingFailedEvent
SIMPLE = '{"t": {{ title | tojson }}, "id": {{ event_id | tojson }}}'
# Templates the sandbox's own checks let through but that would take the relay's CPU or memory
# without bound, each as its body (a JSON object once the bomb is done, were it ever done).
SPIN = '{% for a in "x" * 100000 %}{% for b in "x" * 100000 %}{% endfor %}{% endfor %}'
GROW = '{% set x = ("x" * 100000) | replace("x", "y" * 100000) %}'
BOMBS = {
    "nested_loops": SPIN,
    "replace": GROW,
    "join": '{% set x = ("x" * 100000).join("y" * 100000) %}',
    "expandtabs": '{% set x = ("\\t" * 100000).expandtabs(100000) %}',
    "tojson_indent": '{% set x = ("x" * 100000) | list | tojson(indent=100000) %}',
    "namespace_doubling": '{% set ns = namespace(s="x" * 100000) %}'
    "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "big_integers": "{% set x = (10 ** 64) ** 64 %}{% set y = x ** 64 %}{% set z = y ** 64 %}"
    "{% set w = z ** 64 %}",
    # Passed the old check, which always used this id: now every example has a random one.
    "sentinel_event_id": '{% if event_id != "00000000-0000-4000-8000-000000000000" %}'
    + SPIN
    + "{% endif %}",
}
LIMIT_WORDS = ("render took longer than 1 s", f"render used more than {MEMORY_LIMIT_MIB} MiB")


def request(source: str, envelope: dict[str, Any] = EXAMPLE) -> RenderRequest:
    return RenderRequest(source, json.dumps(envelope).encode(), "event-1", None, None)


@pytest.fixture
async def workers() -> AsyncIterator[TemplateWorkers]:
    pool = TemplateWorkers()
    yield pool
    await pool.close()


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- the workers on their own -------------------------------------------------------------


async def test_a_worker_renders_what_the_process_would(workers: TemplateWorkers) -> None:
    assert workers.pids() == []  # started on first use
    body = await workers.render(request(SIMPLE))
    context = example_context(EXAMPLE, None, event_id="event-1")
    assert body == render({"body": SIMPLE}, context)
    assert json.loads(body) == {"t": "Task processing failed", "id": "event-1"}
    (pid,) = workers.pids()
    assert pid != os.getpid()
    await workers.render(request(SIMPLE))
    assert workers.pids() == [pid]  # reused, not one process per render


async def test_a_worker_runs_under_its_limits(workers: TemplateWorkers) -> None:
    await workers.render(request(SIMPLE))
    (pid,) = workers.pids()
    limits = {
        line[:26].strip(): line[26:].split()
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    }
    assert limits["Max address space"][:2] == [str(MEMORY_LIMIT_MIB * 1024 * 1024)] * 2
    assert limits["Max cpu time"][0] != "unlimited"
    assert limits["Max core file size"][0] == "0"
    # Only the relay's pipes are open in it: no listening socket, no database connection.
    assert sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) == [0, 1, 2, 3]
    # And none of the relay's environment beyond what finds Python.
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert {entry.partition(b"=")[0] for entry in environ if entry} <= {
        b"PATH",
        b"LANG",
        b"LC_ALL",
        b"LC_CTYPE",
        b"PYTHONPATH",
        b"PYTHONHOME",
    }


async def test_a_render_past_its_time_kills_the_worker_and_the_next_renders(
    workers: TemplateWorkers,
) -> None:
    await workers.render(request(SIMPLE))
    (first,) = workers.pids()
    with pytest.raises(RenderFailed, match=r"^render took longer than 1 s$"):
        await workers.render(request(SPIN + "{}"))
    await wait_until(_gone(first))
    assert json.loads(await workers.render(request(SIMPLE)))["id"] == "event-1"
    assert first not in workers.pids()


async def test_a_render_out_of_memory_retires_the_worker_and_the_next_renders(
    workers: TemplateWorkers,
) -> None:
    await workers.render(request(SIMPLE))
    (first,) = workers.pids()
    with pytest.raises(RenderFailed, match=f"^render used more than {MEMORY_LIMIT_MIB} MiB$"):
        await workers.render(request(GROW + "{}"))
    assert json.loads(await workers.render(request(SIMPLE)))["id"] == "event-1"
    assert first not in workers.pids()


async def test_the_cpu_limit_holds_without_the_wall_clock() -> None:
    """RLIMIT_CPU is the worker's own backstop: with the relay's timeout far away, the kernel
    ends the render."""
    pool = TemplateWorkers(render_seconds=60)
    try:
        with pytest.raises(RenderFailed, match=r"^render used more than 2 s of CPU$"):
            await pool.render(request(SPIN + "{}"))
        assert json.loads(await pool.render(request(SIMPLE)))["id"] == "event-1"
    finally:
        await pool.close()


async def test_a_worker_killed_while_idle_is_not_blamed_on_the_next_template(
    workers: TemplateWorkers,
) -> None:
    await workers.render(request(SIMPLE))
    (pid,) = workers.pids()
    os.kill(pid, 9)
    await wait_until(_gone(pid))
    assert json.loads(await workers.render(request(SIMPLE)))["id"] == "event-1"


async def test_other_renders_go_on_while_one_is_stuck(workers: TemplateWorkers) -> None:
    stuck = asyncio.create_task(workers.render(request(SPIN + "{}")))
    for _ in range(20):
        await workers.render(request(SIMPLE))  # on the other worker
    assert not stuck.done()
    with pytest.raises(RenderFailed, match="longer than 1 s"):
        await stuck


async def test_close_stops_every_worker() -> None:
    pool = TemplateWorkers()
    stuck = asyncio.create_task(pool.render(request(SPIN + "{}")))
    await pool.render(request(SIMPLE))
    pids = pool.pids()
    assert len(pids) == 2
    await pool.close()
    assert not any(running(pid) for pid in pids)
    with pytest.raises(WorkersUnavailable):
        await stuck  # not the template's fault: the delivery is retried later
    with pytest.raises(WorkersUnavailable):
        await pool.render(request(SIMPLE))


async def test_the_check_has_a_total_budget() -> None:
    """Each example may take up to a render's time, but not all of them together."""
    slow = '{% for a in range(2000) %}{% for b in "x" * 100000 %}{% endfor %}{% endfor %}{}'
    pool = TemplateWorkers(render_seconds=60, check_seconds=0.5)
    try:
        with pytest.raises(RenderFailed, match=r"took longer than 0\.5 s in all"):
            await pool.check(slow, None)
    finally:
        await pool.close()


def _gone(pid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not running(pid)

    return check


# --- through the API and the dispatcher ---------------------------------------------------


async def _create(relay: Any, body: str, url: str = "http://127.0.0.1:9/") -> Any:
    return await relay.post(
        "/v1/event_sink",
        json={
            "tenant_id": TENANT,
            "name": "chat",
            "description": "",
            "event_sink_args": {"Webhook": {"url": url, "template": {"body": body}}},
        },
        headers=auth(ADMIN_KEY),
    )


async def _latency(relay: Any, method: str, path: str, **kwargs: Any) -> float:
    started = time.perf_counter()
    resp = await relay.request(method, path, **kwargs)
    await resp.read()
    assert resp.status in (200, 202), resp.status
    return time.perf_counter() - started


@pytest.mark.parametrize("bomb", list(BOMBS), ids=list(BOMBS))
async def test_each_bomb_is_refused_at_create(bomb: str, relay: Any) -> None:
    started = time.perf_counter()
    resp = await _create(relay, BOMBS[bomb] + "{}")
    took = time.perf_counter() - started
    assert resp.status == 400
    message = (await resp.json())["error"]["message"]
    assert message.startswith(f"{FIELD} fails for the catalog's "), message
    assert any(words in message for words in LIMIT_WORDS), message
    # A liveness bound, not a benchmark: the check's own budget plus a generous margin.
    assert took < CHECK_SECONDS + 10


@pytest.mark.parametrize(
    ("body", "words"),
    [
        # Doubles per step: the review's example, refused before any render.
        (
            "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
            "{{ f(18) }}{}",
            "uses {% macro %}",
        ),
        # Blocks call one another through self: the same doubling without a macro.
        (
            "{% block a %}{{ self.b() }}{{ self.b() }}{% endblock %}"
            "{% block b %}{{ self.a() }}{% endblock %}{}",
            "uses {% block %}",
        ),
        # Was a RecursionError past the argument checks: a 500.
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "does not compile"),
    ],
    ids=["macro", "blocks", "nesting"],
)
async def test_sources_refused_before_any_render_are_400(body: str, words: str, relay: Any) -> None:
    resp = await _create(relay, body)
    assert resp.status == 400
    message = (await resp.json())["error"]["message"]
    assert message.startswith(f"{FIELD} {words}"), message
    assert relay.app[TEMPLATES].pids() == []


async def test_the_relay_answers_while_a_create_check_renders(relay: Any) -> None:
    check = asyncio.create_task(_create(relay, BOMBS["nested_loops"] + "{}"))
    latencies = []
    while not check.done():
        latencies.append(await _latency(relay, "GET", "/healthz"))
        await asyncio.sleep(0.05)
    assert (await check).status == 400
    assert len(latencies) >= 5 and max(latencies) < 1.0, latencies


@pytest.mark.parametrize(
    ("bomb", "detail"),
    [(SPIN, LIMIT_WORDS[0]), (GROW, LIMIT_WORDS[1])],
    ids=["cpu", "memory"],
)
async def test_a_template_that_bombs_only_on_real_events_ends_dead_while_the_relay_answers(
    bomb: str, detail: str, relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    # Fine for every catalog example; a bomb for an event whose data says so.
    body = '{% if data.get("bomb") %}' + bomb + '{% endif %}{"id": {{ event_id | tojson }}}'
    await create_sink(relay, {"Webhook": {"url": sink_server.url(), "template": {"body": body}}})
    workers = relay.app[TEMPLATES]
    before = set(workers.pids())
    bombing = {"eventName": "CaseCreatedEvent", "organizationId": 1, "data": {"bomb": 1}}
    assert (await post_event(relay, bombing)).status == 202

    async def bomb_done() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'dead'"))

    health, ingest = [], []
    while not await bomb_done():
        health.append(await _latency(relay, "GET", "/healthz"))
        started = time.perf_counter()
        assert (await post_event(relay, EXAMPLE)).status == 202
        ingest.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)
    # Liveness, not a benchmark: the event loop never waited on the render.
    assert max(health) < 1.0 and max(ingest) < 1.0, (health, ingest)

    (dead,) = [r for r in await audit_rows(relay) if r["outcome"] == "failure"]
    assert (dead["error"], dead["status_code"], dead["next_attempt_at"]) == (
        "template_error",
        None,
        None,
    )
    assert dead["response_body"] == detail
    # The worker that met the limit is gone; a fresh one renders the next event.
    assert not before & set(workers.pids())
    assert (await post_event(relay, EXAMPLE)).status == 202
    posted = 2 + len(ingest)
    await wait_final(db, posted)
    statuses = await db.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")
    assert {r["status"]: r["count"] for r in statuses} == {"dead": 1, "delivered": posted - 1}
    assert len(sink_server.received) == posted - 1
    assert all(json.loads(got.body)["id"] for got in sink_server.received)


async def test_no_worker_without_a_custom_template(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    await create_sink(relay, {"Webhook": {"url": sink_server.url(), "template": "discord"}})
    assert (await post_event(relay, EXAMPLE)).status == 202
    await wait_final(db, 2)
    assert relay.app[TEMPLATES].pids() == []


async def test_without_workers_a_check_is_503_and_a_delivery_waits(
    relay: Any, sink_server: SinkServer, db: asyncpg.Connection
) -> None:
    """Workers that cannot render (here: shut down) are not the template's fault."""
    await create_sink(relay, {"Webhook": {"url": sink_server.url(), "template": {"body": SIMPLE}}})
    await relay.app[TEMPLATES].close()
    resp = await _create(relay, SIMPLE)
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert (await resp.json())["error"]["code"] == "unavailable"
    assert (await post_event(relay, EXAMPLE)).status == 202

    async def attempted() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM delivery_attempts"))

    await wait_until(attempted)
    rows = await audit_rows(relay)
    assert {(r["error"], r["next_attempt_at"] is not None) for r in rows} == {
        ("template_unavailable", True)
    }
    assert (await db.fetchval("SELECT status FROM deliveries")) == "pending"
