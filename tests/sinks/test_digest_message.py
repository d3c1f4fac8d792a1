"""The storm digest messages as pure functions: inside Slack's limits whatever the events hold,
and the Webhook body is the listed envelopes, byte for byte."""

# ruff: noqa: RUF001 (the digest headline has U+00D7, the multiplication sign)
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from air_relay.model import Digest, DigestMember
from air_relay.sinks.digest_message import key_text, slack_message, webhook_body
from tests.sinks.test_slack import limit_problems

START = datetime(2026, 11, 27, 21, 4, 35, tzinfo=UTC)


def digest(bodies: list[bytes], count: int, org: int | str = 1) -> Digest:
    members = [
        DigestMember(uuid.uuid4(), body, START + timedelta(seconds=n))
        for n, body in enumerate(bodies)
    ]
    return Digest(
        uuid.uuid4(), "TaskProcessingFailedEvent", org, count, 60, START,
        START + timedelta(seconds=60), members,
    )  # fmt: skip


def test_huge_events_keep_the_slack_digest_inside_every_limit() -> None:
    data = {"taskId": "x" * 50_000, "taskName": "<!channel> " * 500, "endpointName": "é" * 3000}
    huge = json.dumps(
        {"eventName": "TaskProcessingFailedEvent", "organizationId": 1, "data": data}
    ).encode()
    message = slack_message(digest([huge] * 100, 500))
    payload = {"channel": "C1", "text": message.text, "blocks": message.blocks}
    assert limit_problems(payload) == []
    assert message.text == "500 × TaskProcessingFailedEvent in org 1 during the last 60 s"
    shown = json.dumps(message.blocks, ensure_ascii=False)
    listed = shown.count("• ")
    assert 0 < listed < 100 and f"…and {500 - listed} more" in shown
    assert "<!channel>" not in shown  # escaped like every other message


def test_key_fields_follow_the_summary() -> None:
    data = {"taskId": "4021", "taskType": "acquisition", "taskName": "Acquire evidence",
            "endpointName": "ws-7"}  # fmt: skip
    assert key_text("TaskProcessingFailedEvent", data) == (
        "Task processing failed: acquisition · Acquire evidence · ws-7"
    )


def test_the_webhook_digest_lists_the_envelopes_as_sent() -> None:
    raw = [b'{"eventName": "TaskProcessingFailedEvent",\n "organizationId": "o-1", "data": {}}']
    body = webhook_body(digest(raw * 2, 7, "o-1"))
    parsed = json.loads(body)
    assert parsed["organizationId"] == "o-1" and parsed["digest"]["count"] == 7
    assert parsed["digest"]["window_start"] == "2026-11-27T21:04:35Z"
    assert parsed["digest"]["window_end"] == "2026-11-27T21:05:35Z"
    assert raw[0] + b"," + raw[0] in body  # byte for byte
