"""The shortest path through the whole pipeline: sink created, event in, webhook out."""

from __future__ import annotations

from typing import Any

from tests.support import CATALOG, SinkServer, create_sink, post_event


async def test_event_reaches_webhook(relay: Any, sink_server: SinkServer) -> None:
    await create_sink(relay, {"Webhook": {"url": sink_server.url()}})
    example = CATALOG[0]["example"]
    resp = await post_event(relay, example)
    assert resp.status == 202
    body = await resp.json()
    assert body["deliveries"] == 1
    (got,) = await sink_server.wait_for(1)
    assert got.json() == example
