"""The sink options ``ordering`` and ``fallback_event_sink_id`` in the sink API: absent means
today's behaviour, stored and echoed by create, get, list and update, 400 naming the field when
wrong (unknown value, another tenant's sink, the sink itself, a cycle), and a 409 naming the
dependant when a sink named as fallback is deleted."""

from __future__ import annotations

from typing import Any

from tests.http.test_sinks_api import assert_error, call
from tests.support import TENANT, TENANT_B, create_sink

HOOK = {"Webhook": {"url": "http://127.0.0.1:9/hook"}}


async def test_options_are_absent_by_default_and_echoed_everywhere(relay: Any) -> None:
    plain = await create_sink(relay, HOOK)
    assert (plain["ordering"], plain["fallback_event_sink_id"]) == ("none", None)

    sink = await create_sink(
        relay, HOOK, ordering="case", fallback_event_sink_id=plain["id"], name="ordered"
    )
    assert (sink["ordering"], sink["fallback_event_sink_id"]) == ("case", plain["id"])
    status, body, _ = await call(relay, "GET", f"/v1/event_sink/{sink['id']}")
    assert status == 200
    got = body["event_sink"]
    assert (got["ordering"], got["fallback_event_sink_id"]) == ("case", plain["id"])
    status, body, _ = await call(relay, "GET", "/v1/event_sink", params={"tenant_id": TENANT})
    listed = {s["id"]: s for s in body["data"]["event_sinks"]}
    assert listed[sink["id"]]["ordering"] == "case"
    assert listed[sink["id"]]["fallback_event_sink_id"] == plain["id"]

    # An update changes only what it names; null clears the fallback.
    status, body, _ = await call(relay, "PUT", f"/v1/event_sink/{sink['id']}", {"name": "x"})
    assert status == 200, body
    assert body["event_sink"]["ordering"] == "case"
    assert body["event_sink"]["fallback_event_sink_id"] == plain["id"]
    status, body, _ = await call(
        relay,
        "PUT",
        f"/v1/event_sink/{sink['id']}",
        {"ordering": "endpoint", "fallback_event_sink_id": None},
    )
    assert status == 200, body
    assert (body["event_sink"]["ordering"], body["event_sink"]["fallback_event_sink_id"]) == (
        "endpoint",
        None,
    )


async def test_bad_options_are_400_naming_the_field(relay: Any) -> None:
    other_tenant = await create_sink(relay, HOOK, tenant_id=TENANT_B)
    base = {
        "tenant_id": TENANT,
        "name": "n",
        "description": "",
        "event_sink_args": HOOK,
    }
    for extra, field in [
        ({"ordering": "organization"}, "ordering"),
        ({"ordering": 1}, "ordering"),
        ({"fallback_event_sink_id": "not-a-uuid"}, "fallback_event_sink_id"),
        ({"fallback_event_sink_id": 7}, "fallback_event_sink_id"),
        (
            {"fallback_event_sink_id": "5f0c1a52-2b4e-4a8e-9c39-0a5a3f1f7d11"},
            "fallback_event_sink_id",
        ),
        ({"fallback_event_sink_id": other_tenant["id"]}, "fallback_event_sink_id"),
    ]:
        status, body, _ = await call(relay, "POST", "/v1/event_sink", {**base, **extra})
        assert_error(status, body, 400, "invalid_argument", field)


async def test_fallback_is_not_itself_and_makes_no_cycle(relay: Any) -> None:
    a = await create_sink(relay, HOOK, name="a")
    b = await create_sink(relay, HOOK, name="b", fallback_event_sink_id=a["id"])
    c = await create_sink(relay, HOOK, name="c", fallback_event_sink_id=b["id"])
    status, body, _ = await call(
        relay, "PUT", f"/v1/event_sink/{a['id']}", {"fallback_event_sink_id": a["id"]}
    )
    assert_error(status, body, 400, "invalid_argument", "fallback_event_sink_id", "itself")
    # a -> c would close c -> b -> a.
    status, body, _ = await call(
        relay, "PUT", f"/v1/event_sink/{a['id']}", {"fallback_event_sink_id": c["id"]}
    )
    assert_error(status, body, 400, "invalid_argument", "fallback_event_sink_id", "cycle")
    # Extending the chain at its end is fine.
    d = await create_sink(relay, HOOK, name="d")
    status, body, _ = await call(
        relay, "PUT", f"/v1/event_sink/{a['id']}", {"fallback_event_sink_id": d["id"]}
    )
    assert status == 200, body


async def test_deleting_a_named_fallback_is_409_naming_the_dependant(relay: Any) -> None:
    fallback = await create_sink(relay, HOOK, name="slack-fallback")
    primary = await create_sink(
        relay, HOOK, name="pagerduty-primary", fallback_event_sink_id=fallback["id"]
    )
    status, body, _ = await call(relay, "DELETE", f"/v1/event_sink/{fallback['id']}")
    assert_error(status, body, 409, "sink_in_use", primary["id"], "pagerduty-primary")
    status, _, _ = await call(relay, "GET", f"/v1/event_sink/{fallback['id']}")
    assert status == 200
    # Once nothing names it, it goes; the dependant itself could always be deleted.
    status, body, _ = await call(
        relay, "PUT", f"/v1/event_sink/{primary['id']}", {"fallback_event_sink_id": None}
    )
    assert status == 200, body
    status, _, _ = await call(relay, "DELETE", f"/v1/event_sink/{fallback['id']}")
    assert status == 200


async def test_ordering_and_digest_are_refused_together(relay: Any) -> None:
    """A digest's held deliveries would not hold back later events of their key."""
    digest = {"window_seconds": 60}
    base = {"tenant_id": TENANT, "name": "n", "description": "", "event_sink_args": HOOK}
    status, body, _ = await call(
        relay, "POST", "/v1/event_sink", {**base, "ordering": "task", "digest": digest}
    )
    message = assert_error(status, body, 400, "invalid_argument", "digest")
    assert message.startswith("digest cannot be combined"), message

    ordered = await create_sink(relay, HOOK, ordering="task", name="ordered")
    status, body, _ = await call(
        relay, "PUT", f"/v1/event_sink/{ordered['id']}", {"digest": digest}
    )
    message = assert_error(status, body, 400, "invalid_argument", "digest")
    assert message.startswith("digest cannot"), message
    digested = await create_sink(relay, HOOK, digest=digest, name="digested")
    status, body, _ = await call(
        relay, "PUT", f"/v1/event_sink/{digested['id']}", {"ordering": "case"}
    )
    message = assert_error(status, body, 400, "invalid_argument", "ordering")
    assert message.startswith("ordering cannot"), message
    # Turning one off while setting the other is fine.
    status, body, _ = await call(
        relay,
        "PUT",
        f"/v1/event_sink/{digested['id']}",
        {"ordering": "case", "digest": None},
    )
    assert status == 200, body
    assert (body["event_sink"]["ordering"], body["event_sink"]["digest"]) == ("case", None)
