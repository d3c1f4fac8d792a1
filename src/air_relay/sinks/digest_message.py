"""What a storm digest looks like at each sink type: the Webhook body, the Slack message and
the PagerDuty event for one ``Digest`` (many deliveries of one eventName and organizationId
held during a window). Pure functions, no I/O; ``docs/sinks.md`` shows each."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from air_relay.events import event_data, severity_for
from air_relay.model import Digest, DigestMember
from air_relay.redaction import ELLIPSIS
from air_relay.sinks.slack_message import (
    BLOCKS_TEXT_BUDGET,
    HEADER_LIMIT,
    MAX_BLOCKS,
    SlackMessage,
    _safe_summary,
    fit,
    mrkdwn,
    plain,
    units,
)
from air_relay.timestamps import rfc3339

# PagerDuty's limits (as in sinks.pagerduty, which sends what is built here).
PD_SUMMARY_LIMIT = 1024
PD_DEDUP_KEY_LIMIT = 255
PD_NAME_LIMIT = 100
PD_CLIENT = "air-relay"

# One listed event's line in Slack (before its time), and what one section's text may hold
# (Slack's limit is 3000).
LINE_LIMIT = 250
SECTION_LIMIT = 2900
# Fields that tell one event of a storm from another, shown after its summary when present.
KEY_FIELDS = ("taskName", "endpointName", "caseName", "ruleName", "name")


# U+00D7, the multiplication sign, as in the headline "37 (times) TaskProcessingFailedEvent".
TIMES = "\u00d7"


def headline(d: Digest) -> str:
    """``37 x TaskProcessingFailedEvent in org 1 during the last 60 s`` (with U+00D7)."""
    org, seconds = d.organization_id, d.window_seconds
    return f"{d.count} {TIMES} {d.event_name} in org {org} during the last {seconds} s"


def more_line(d: Digest, shown: int) -> str | None:
    """``…and 17 more`` when not every member is listed."""
    rest = d.count - shown
    return f"{ELLIPSIS}and {rest} more" if rest > 0 else None


def _data(member: DigestMember) -> Mapping[str, Any]:
    data, _ = event_data(member.body)
    return data if isinstance(data, Mapping) else {}


# --- Webhook ------------------------------------------------------------------------------


def webhook_body(d: Digest) -> bytes:
    """``{"eventName", "organizationId", "digest": {"count", "window_start", "window_end",
    "events": [...]}}``, the listed envelopes spliced in exactly as AIR sent them."""
    head = {
        "count": d.count,
        "window_start": rfc3339(d.window_start),
        "window_end": rfc3339(d.window_end),
    }
    prefix = (
        '{"eventName":'
        + json.dumps(d.event_name)
        + ',"organizationId":'
        + json.dumps(d.organization_id)
        + ',"digest":'
        + json.dumps(head)[:-1]
        + ',"events":['
    )
    return prefix.encode() + b",".join(m.body for m in d.listed) + b"]}}"


# --- Slack --------------------------------------------------------------------------------


def key_text(event_name: str, data: Mapping[str, Any]) -> str:
    """The event's summary and its other key fields: ``Task processing failed: 42 · Acquire
    evidence · ws-7``."""
    parts = [_safe_summary(event_name, data)]
    for key in KEY_FIELDS:
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            text = str(value)[:LINE_LIMIT]
            if not any(text in part for part in parts):
                parts.append(text)
    return " · ".join(parts)


def _line(d: Digest, member: DigestMember) -> str:
    stamp = int(member.received_at.timestamp())
    iso = rfc3339(member.received_at)
    when = f"<!date^{stamp}^{{time_secs}}|{iso}>"
    return f"• {mrkdwn(key_text(d.event_name, _data(member)), LINE_LIMIT)} · {when}"


def slack_message(d: Digest) -> SlackMessage:
    """One message: the headline, then the listed events one line each (a summary of their
    key fields and the time), then ``…and N more``; inside Slack's limits."""
    text = headline(d)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": plain(text, HEADER_LIMIT)}}
    ]
    budget = BLOCKS_TEXT_BUDGET - units(text) - 200
    lines: list[str] = []
    size = 0
    shown = 0
    for member in d.listed:
        line = _line(d, member)
        if size + units(line) + 1 > SECTION_LIMIT:
            blocks.append(_section(lines))
            lines, size = [], 0
        if units(line) > budget or len(blocks) >= MAX_BLOCKS - 3:
            break
        budget -= units(line) + 1
        lines.append(line)
        size += units(line) + 1
        shown += 1
    if lines:
        blocks.append(_section(lines))
    footer = (
        f"AIR event {mrkdwn(d.event_name, 200)} · Organization "
        f"{mrkdwn(str(d.organization_id), 200)} · window {rfc3339(d.window_start)} "
        f"to {rfc3339(d.window_end)}"
    )
    more = more_line(d, shown)
    if more:
        blocks.append(_context(more))
    blocks.append(_context(footer))
    return SlackMessage(text=fit(mrkdwn(text, 3000), 3000), blocks=blocks)


def _section(lines: list[str]) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


# --- PagerDuty ----------------------------------------------------------------------------


def dedup_key(d: Digest) -> str:
    """Names the group (eventName, organizationId) and the window: one incident per digest."""
    name = d.event_name[:PD_NAME_LIMIT]
    org = str(d.organization_id)[:60]
    return f"air-relay:digest:{name}:org-{org}:{d.id.hex}"[:PD_DEDUP_KEY_LIMIT]


def pagerduty_event(d: Digest, routing_key: str) -> dict[str, Any]:
    """One ``trigger``: the headline as summary, the listed events' data in custom_details
    (the sender keeps it under PagerDuty's size limit)."""
    org = str(d.organization_id)
    listed = [{"received_at": rfc3339(m.received_at), "data": _data(m)} for m in d.listed]
    details: dict[str, Any] = {
        "count": d.count,
        "window_start": rfc3339(d.window_start),
        "window_end": rfc3339(d.window_end),
        "events": listed,
    }
    if d.count > len(listed):
        details["more"] = d.count - len(listed)
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(d),
        "payload": {
            "summary": fit("[AIR] " + headline(d), PD_SUMMARY_LIMIT),
            "source": fit(f"AIR organization {org}", 255),
            "severity": severity_for(d.event_name),
            "timestamp": rfc3339(d.window_end),
            "group": org,
            "class": d.event_name,
            "custom_details": details,
        },
        "client": PD_CLIENT,
    }
