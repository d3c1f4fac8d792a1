"""Ingest fuzzed with random and malformed bodies: a clear 4xx or a 202, never a 500."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import post_event

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "eventName": JSON_VALUES | st.sampled_from(["CaseCreatedEvent", "TaskFailedEvent", ""]),
        "organizationId": JSON_VALUES | st.integers(),
        "data": JSON_VALUES | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5),
    },
)


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(encode),
    ENVELOPES.map(encode),
    ENVELOPES.map(encode).map(lambda b: b[: len(b) // 2]),  # truncated JSON
)

ALLOWED = {202, 400, 413, 415, 422}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES)
async def test_ingest_never_answers_500(relay: Any, body: bytes) -> None:
    resp = await post_event(relay, body)
    assert resp.status in ALLOWED, (resp.status, await resp.text(), body)
    payload = await resp.json()
    if resp.status == 202:
        assert set(payload) == {"event_id", "deliveries"}
    else:
        assert set(payload["error"]) == {"code", "message"}
