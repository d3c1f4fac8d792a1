"""PagerDuty sink: one Events API v2 ``trigger`` per AIR event (SPEC 4).

What is sent to ``pagerduty.events_url``::

    {"routing_key": <the sink's integration_key>, "event_action": "trigger",
     "dedup_key": "air-relay:<eventName>:<sha256 of the event bytes>",
     "payload": {"summary", "source", "severity", "timestamp", "component"?,
                 "group": str(organizationId), "class": eventName, "custom_details": data},
     "links": [{"href", "text"}], "client": "air-relay", "client_url"?}

Severity by event type (``SEVERITY``; an unknown type is ``info``):

- ``critical``: TriageRuleMatchedEvent (a triage rule match is a detection).
- ``error``: TaskProcessingFailedEvent, EndpointIsolationStatusUpdatedEvent,
  DeploymentTokenRegeneratedEvent.
- ``warning``: EndpointDeletedEvent, EndpointUninstalledEvent, OrganizationDeletedEvent,
  RelayServerRemovedEvent, TaskCancelledEvent, TaskAssignmentCancelledEvent,
  TaskAssignmentDeletedEvent, TaskDeletedEvent.
- ``info``: the other 16 event types.

The dedup_key comes from the event itself (its name and a SHA-256 of the exact bytes AIR sent),
never from the delivery: a retried or replayed delivery, a second sink on the same service and
AIR posting the identical event again all carry the same key, so PagerDuty folds them into one
open incident instead of opening another.

PagerDuty refuses events of 512 KB or more; such an event goes out with ``custom_details``
replaced by a small marker saying it was dropped (and, should it still be too big, without
links).

Responses: 2xx (PagerDuty answers 202) is delivered. 400 is permanent; its body (PagerDuty's
``message`` and ``errors``) goes to the audit row, and the audit ``error`` is
``invalid_event`` when PagerDuty says ``"status": "invalid event"``. 429 and 5xx are transient
(``Retry-After`` honoured); other statuses and connection failures follow ``base``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from air_relay import __version__
from air_relay.config import PagerDutyConfig
from air_relay.db.repository import ClaimedDelivery
from air_relay.event_text import event_data, event_links, event_summary, event_title
from air_relay.sinks.base import (
    SendResult,
    exception_failure,
    http_failure,
    parse_retry_after,
    read_audit_text,
)
from air_relay.timestamps import rfc3339

SEVERITY: dict[str, str] = {
    "TriageRuleMatchedEvent": "critical",
    "TaskProcessingFailedEvent": "error",
    "EndpointIsolationStatusUpdatedEvent": "error",
    "DeploymentTokenRegeneratedEvent": "error",
    "EndpointDeletedEvent": "warning",
    "EndpointUninstalledEvent": "warning",
    "OrganizationDeletedEvent": "warning",
    "RelayServerRemovedEvent": "warning",
    "TaskCancelledEvent": "warning",
    "TaskAssignmentCancelledEvent": "warning",
    "TaskAssignmentDeletedEvent": "warning",
    "TaskDeletedEvent": "warning",
    "AirVersionAvailableEvent": "info",
    "AssetCreatedEvent": "info",
    "CaseArchivedEvent": "info",
    "CaseClosedEvent": "info",
    "CaseCreatedEvent": "info",
    "CaseFileSavedEvent": "info",
    "DroneFileSavedEvent": "info",
    "EndpointRegisteredEvent": "info",
    "OrganizationCreatedEvent": "info",
    "OrganizationUpdatedEvent": "info",
    "RelayServerRegisteredEvent": "info",
    "TaskAssignedToEndpointEvent": "info",
    "TaskCompletedEvent": "info",
    "TaskProcessingCompletedEvent": "info",
    "TaskScheduledForEndpointEvent": "info",
    "TasksHaveBeenTakenByEndpointEvent": "info",
}
DEFAULT_SEVERITY = "info"

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


def severity_for(event_name: str) -> str:
    return SEVERITY.get(event_name, DEFAULT_SEVERITY)


def dedup_key(event_name: str, body: bytes) -> str:
    """The same AIR event (same name, same bytes) always gives the same key."""
    digest = hashlib.sha256(body).hexdigest()
    return f"air-relay:{event_name[:DEDUP_NAME_LIMIT]}:{digest}"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def _links(data: Mapping[str, Any]) -> list[dict[str, str]]:
    return [
        {"href": url, "text": label}
        for label, url in event_links(data)
        if len(url) <= LINK_HREF_LIMIT
    ]


def build_event(delivery: ClaimedDelivery, routing_key: str) -> dict[str, Any]:
    """The full Events API v2 body, before the size rule."""
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
    links = _links(fields)
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


def render(delivery: ClaimedDelivery, routing_key: str) -> bytes:
    """The exact request body for one delivery (a pure function of the delivery)."""
    return fit(build_event(delivery, routing_key))


def failure(status: int, body: str, retry_after: float | None) -> SendResult:
    """A non-2xx answer; a 400 names PagerDuty's own verdict (``invalid_event``)."""
    result = http_failure(status, body, retry_after)
    if status != 400:
        return result
    try:
        answer = json.loads(body)
    except ValueError:
        return result
    if isinstance(answer, dict) and answer.get("status") == "invalid event":
        return SendResult(
            ok=False,
            status_code=400,
            error="invalid_event",
            reason=result.reason,
            transient=False,
            response_body=body,
        )
    return result


class PagerDutySender:
    sink_type = "PagerDuty"

    def __init__(
        self, session: aiohttp.ClientSession, cfg: PagerDutyConfig, timeout_seconds: float
    ) -> None:
        self._session = session
        self._cfg = cfg
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def send(self, delivery: ClaimedDelivery) -> SendResult:
        key = str((delivery.sink_args or {}).get("integration_key") or "")
        body = render(delivery, key)
        headers = {"Content-Type": "application/json", "User-Agent": f"air-relay/{__version__}"}
        try:
            async with self._session.post(
                self._cfg.events_url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                # PagerDuty may quote the routing_key back in an error message.
                text = await read_audit_text(resp, (key,))
                if 200 <= resp.status < 300:
                    return SendResult(ok=True, status_code=resp.status, response_body=text)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                return failure(resp.status, text, retry_after)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return exception_failure(exc)
