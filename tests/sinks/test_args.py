"""Sink argument rules without HTTP: each type's validation, merging an update, masking."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from air_relay.model import Sink
from air_relay.sinks.registry import SINK_TYPES, parse_sink_args, shown_args
from air_relay.validation import InvalidArgument
from tests.support import SLACK_INTEGRATION, make_config

CFG = make_config()
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "bearer-token-1234567890"
SLACK = "event_sink_args.Slack"


def stored(sink_type: str, args: dict[str, Any]) -> Sink:
    now = datetime.now(UTC)
    return Sink(
        tenant_id="t",
        name="n",
        description="",
        sink_type=sink_type,
        args=args,
        events=None,
        organization_ids=None,
        active=True,
        id=uuid.uuid4(),
        created_at=now,
        updated_at=now,
    )


def test_the_three_types() -> None:
    assert list(SINK_TYPES) == ["Slack", "Webhook", "PagerDuty"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({}, "event_sink_args"),
        ({"Webhook": {}, "Slack": {}}, "event_sink_args"),
        ({"Teams": {}}, "event_sink_args"),
        ({"Webhook": "x"}, "event_sink_args.Webhook"),
        ({"Webhook": {}}, "event_sink_args.Webhook.url"),
        ({"Webhook": {"url": "ftp://h/"}}, "event_sink_args.Webhook.url"),
        ({"Webhook": {"url": "https://h/", "nope": 1}}, "event_sink_args.Webhook.nope"),
        ({"Webhook": {"url": "https://h/", "secret": "abc"}}, "event_sink_args.Webhook.secret"),
        ({"Slack": {"slack_integration_id": SLACK_INTEGRATION}}, f"{SLACK}.channel_id"),
        ({"Slack": {"channel": "c", "slack_integration_id": "x"}}, f"{SLACK}.slack_integration_id"),
        ({"PagerDuty": {}}, "event_sink_args.PagerDuty.integration_key"),
    ],
)  # fmt: skip
def test_bad_args_name_their_field(raw: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_sink_args(raw, CFG)
    assert info.value.field == field


def test_write_only_secrets_are_masked_and_a_masked_value_sent_back_keeps_them() -> None:
    sink_type, args = parse_sink_args(
        {"Webhook": {"url": "https://h/", "secret": SECRET, "bearer_token": TOKEN}}, CFG
    )
    shown = shown_args(sink_type, args)
    assert shown["secret"] == "whsec_…LaSw"
    assert shown["bearer_token"] == "…7890"
    # A client that round-trips a GET keeps both secrets.
    _, merged = parse_sink_args({"Webhook": shown}, CFG, stored(sink_type, args))
    assert merged == {"url": "https://h/", "secret": SECRET, "bearer_token": TOKEN}
    # With any other URL, even a new path on the same host, they must be given again.
    with pytest.raises(InvalidArgument) as info:
        parse_sink_args({"Webhook": {**shown, "url": "https://h/v2"}}, CFG, stored(sink_type, args))
    assert info.value.field == "event_sink_args.Webhook.secret"


def test_an_update_merges_and_null_removes_an_optional_argument() -> None:
    old = stored("Webhook", {"url": "https://h/", "bearer_token": TOKEN, "headers": {"X-A": "1"}})
    _, merged = parse_sink_args({"Webhook": {"bearer_token": None}}, CFG, old)
    assert merged == {"url": "https://h/", "headers": {"X-A": "1"}}


def test_naming_either_slack_channel_replaces_both() -> None:
    old = stored("Slack", {"channel": "#old", "slack_integration_id": SLACK_INTEGRATION})
    _, merged = parse_sink_args({"Slack": {"channel_id": "C2"}}, CFG, old)
    assert merged == {"channel_id": "C2", "slack_integration_id": SLACK_INTEGRATION}


def test_a_new_type_replaces_the_args_instead_of_merging() -> None:
    old = stored("Webhook", {"url": "https://h/", "bearer_token": TOKEN})
    sink_type, args = parse_sink_args({"PagerDuty": {"integration_key": "k" * 32}}, CFG, old)
    assert (sink_type, args) == ("PagerDuty", {"integration_key": "k" * 32})
