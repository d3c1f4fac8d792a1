"""The PagerDuty sender: one Events API v2 ``trigger`` per AIR event, built by ``render`` (a
pure function of the delivery), with a ``dedup_key`` derived from the event itself and a body
kept under PagerDuty's 512 KB by dropping ``custom_details`` first. ``docs/sinks.md`` shows
the field mapping and the error table."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from air_relay import __version__
from air_relay.config import PagerDutyConfig
from air_relay.events import event_data, event_links, event_summary, event_title, severity_for
from air_relay.model import ClaimedDelivery, Digest
from air_relay.redaction import ELLIPSIS
from air_relay.sinks.base import Answer, SendResult, http_failure, post, send_timeout
from air_relay.sinks.digest_message import pagerduty_event
from air_relay.timestamps import rfc3339

# PagerDuty's documented limits.
MAX_BODY_BYTES = 512 * 1024  # the whole event must stay below this
SUMMARY_LIMIT = 1024
DEDUP_KEY_LIMIT = 255
FIELD_LIMIT = 255  # source, component: PagerDuty keeps short identifiers there
LINK_HREF_LIMIT = 2048
DEDUP_NAME_LIMIT = 100  # keeps "air-relay:<name>:<64 hex>" within DEDUP_KEY_LIMIT

CLIENT = "air-relay"
DROPPED_REASON = "custom_details dropped: the event exceeds PagerDuty's 512 KB limit"
UNREADABLE_REASON = "custom_details dropped: the event's data could not be re-encoded as JSON"


def dedup_key(event_name: str, body: bytes) -> str:
    """The same AIR event (same name, same bytes) always gives the same key."""
    digest = hashlib.sha256(body).hexdigest()
    return f"air-relay:{event_name[:DEDUP_NAME_LIMIT]}:{digest}"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def one_line(text: str) -> str:
    return " ".join(text.split())


def summary_text(event_name: str, data: Mapping[str, Any], org: str) -> str:
    """``[AIR] Triage rule matched: Rule on Endpoint (org 1)``, at most 1024 characters."""
    prefix, suffix = "[AIR] ", clip(f" (org {one_line(org)})", SUMMARY_LIMIT // 2)
    try:
        middle = one_line(event_summary(event_name, data))
    except RecursionError:  # a subject field nested thousands deep: the title alone will do
        middle = event_title(event_name)
    middle = middle or "AIR event"
    return prefix + clip(middle, SUMMARY_LIMIT - len(prefix) - len(suffix)) + suffix


def _links(data: Mapping[str, Any], console_url: str | None) -> list[dict[str, str]]:
    return [
        {"href": url, "text": label}
        for label, url in event_links(data, console_url)
        if len(url) <= LINK_HREF_LIMIT
    ]


def build_event(
    delivery: ClaimedDelivery, routing_key: str, console_url: str | None = None
) -> dict[str, Any]:
    """The full Events API v2 body, before the size rule. With ``console_url``, AIR's
    console-relative links become ``links`` too."""
    data, readable = event_data(delivery.body)
    fields: Mapping[str, Any] = data if isinstance(data, dict) else {}
    org = str(delivery.organization_id)
    payload: dict[str, Any] = {
        "summary": summary_text(delivery.event_name, fields, org),
        "source": clip(one_line(f"AIR organization {org}"), FIELD_LIMIT),
        "severity": severity_for(delivery.event_name),
        "timestamp": rfc3339(delivery.received_at),
    }
    endpoint = fields.get("endpointName")
    if isinstance(endpoint, str) and endpoint.strip():
        payload["component"] = clip(one_line(endpoint), FIELD_LIMIT)
    payload["group"] = org
    payload["class"] = delivery.event_name
    if isinstance(data, dict):
        payload["custom_details"] = data
    elif readable:
        # AIR's data is an object (ingest checks it); anything else is kept, wrapped.
        payload["custom_details"] = {"data": data}
    else:
        payload["custom_details"] = {"truncated": True, "reason": UNREADABLE_REASON}
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(delivery.event_name, delivery.body),
        "payload": payload,
        "client": CLIENT,
    }
    links = _links(fields, console_url)
    if links:
        event["links"] = links
        event["client_url"] = links[0]["href"]
    return event


def encode(event: dict[str, Any]) -> bytes | None:
    """Compact JSON bytes; None when the event cannot be written as JSON (absurd nesting)."""
    try:
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # An unpaired surrogate in AIR's data: only the escaped form is valid UTF-8 JSON.
        return json.dumps(event, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def fit(event: dict[str, Any]) -> bytes:
    """The bytes to send, below PagerDuty's 512 KB: custom_details go first, then links."""
    body = encode(event)
    if body is not None and len(body) < MAX_BODY_BYTES:
        return body
    marker: dict[str, Any] = {"truncated": True}
    if body is None:
        marker["reason"] = UNREADABLE_REASON
    else:
        marker.update(reason=DROPPED_REASON, original_size_bytes=len(body))
    event = {**event, "payload": {**event["payload"], "custom_details": marker}}
    body = encode(event)
    if body is not None and len(body) < MAX_BODY_BYTES:
        return body
    # Cannot happen with the limits above (every other field is short); kept as the last stop.
    event = {k: v for k, v in event.items() if k not in ("links", "client_url")}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def render(delivery: ClaimedDelivery, routing_key: str, console_url: str | None = None) -> bytes:
    """The exact request body for one delivery (a pure function of the delivery)."""
    return fit(build_event(delivery, routing_key, console_url))


def classify(answer: Answer) -> SendResult:
    """PagerDuty's answer: 2xx is delivered; a 400 names PagerDuty's own verdict
    (``invalid_event``); other statuses follow the plain HTTP rule."""
    if 200 <= answer.status < 300:
        return SendResult(ok=True, status_code=answer.status, response_body=answer.audit_body)
    result = http_failure(answer.status, answer.audit_body, answer.retry_after)
    if answer.status != 400:
        return result
    try:
        verdict = json.loads(answer.audit_body)
    except ValueError:
        return result
    if isinstance(verdict, dict) and verdict.get("status") == "invalid event":
        return SendResult(
            ok=False,
            status_code=400,
            error="invalid_event",
            reason=result.reason,
            transient=False,
            response_body=answer.audit_body,
        )
    return result


class PagerDutySender:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        cfg: PagerDutyConfig,
        timeout_seconds: float,
        *,
        console_url: str | None = None,
        connect_timeout_seconds: float | None = None,
    ) -> None:
        self._session = session
        self._cfg = cfg
        self._timeout = send_timeout(timeout_seconds, connect_timeout_seconds)
        self._console_url = console_url

    async def send(self, delivery: ClaimedDelivery) -> SendResult:
        key = str((delivery.sink_args or {}).get("integration_key") or "")
        return await self._post(key, render(delivery, key, self._console_url))

    async def send_digest(self, delivery: ClaimedDelivery, digest: Digest) -> SendResult:
        """One trigger for the storm digest (its dedup_key names the group and the window)."""
        key = str((delivery.sink_args or {}).get("integration_key") or "")
        return await self._post(key, fit(pagerduty_event(digest, key)))

    async def _post(self, key: str, body: bytes) -> SendResult:
        return await post(
            self._session,
            self._cfg.events_url,
            body=body,
            headers={"Content-Type": "application/json", "User-Agent": f"air-relay/{__version__}"},
            timeout=self._timeout,
            # PagerDuty may quote the routing_key back in an error message.
            secrets=(key,),
            classify=classify,
        )
