"""The AIR event types: the catalog of the 28 events and their documented ``data``
parameters, and how air-relay words them for people (titles, subjects, links, severity,
credential fields), shared by the Slack and PagerDuty senders.

AIR's documentation is not a strict schema, so a mismatch with the catalog is reported (logged
and counted) but never rejects an event.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from air_relay.redaction import mask

# --- the catalog ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EventType:
    name: str
    description: str
    parameters: dict[str, str]  # parameter name -> documented type
    example: dict[str, Any]


@cache
def catalog() -> dict[str, EventType]:
    raw = json.loads(
        resources.files("air_relay").joinpath("data/air-event-catalog.json").read_text("utf-8")
    )
    return {
        e["eventName"]: EventType(
            name=e["eventName"],
            description=e["description"],
            parameters={p["name"]: p["type"] for p in e["parameters"]},
            example=e["example"],
        )
        for e in raw
    }


def _matches(value: Any, documented: str) -> bool:
    if documented == "string":
        return isinstance(value, str)
    if documented == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if documented == "array of strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if documented == "object":
        return isinstance(value, dict)
    return True  # a type the catalog names but we do not know how to check


def parameter_mismatches(event_name: str, data: dict[str, Any]) -> list[str]:
    """How ``data`` differs from the catalog; [] when it fits or the event is unknown."""
    event = catalog().get(event_name)
    if event is None:
        return []
    problems = []
    for name, documented in event.parameters.items():
        if name not in data:
            problems.append(f"missing {name}")
        elif not _matches(data[name], documented):
            problems.append(f"{name} is not {documented}")
    problems.extend(f"unexpected {name}" for name in data if name not in event.parameters)
    return problems


# --- wording ---------------------------------------------------------------------------------

# eventName -> (title, data keys naming the subject). Two keys where the second is an endpoint
# read "X on endpoint"; otherwise the keys are alternatives, best first.
EVENT_TITLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "DeploymentTokenRegeneratedEvent": ("Deployment token regenerated", ("organizationName",)),
    "CaseFileSavedEvent": ("Case file saved", ("taskId", "assetId")),
    "TaskProcessingCompletedEvent": ("Task processing completed", ("taskType", "taskId")),
    "TaskProcessingFailedEvent": ("Task processing failed", ("taskType", "taskId")),
    "AirVersionAvailableEvent": ("New AIR version available", ("newVersion",)),
    "AssetCreatedEvent": ("Asset created", ("name", "id")),
    "CaseArchivedEvent": ("Case archived", ("name", "id")),
    "CaseClosedEvent": ("Case closed", ("name", "id")),
    "CaseCreatedEvent": ("Case created", ("name", "id")),
    "EndpointDeletedEvent": ("Endpoint deleted", ("name", "id")),
    "EndpointIsolationStatusUpdatedEvent": (
        "Endpoint isolation status changed",
        ("newStatus", "endpointId"),
    ),
    "EndpointRegisteredEvent": ("Endpoint registered", ("name", "id")),
    "EndpointUninstalledEvent": ("Endpoint uninstalled", ("name", "id")),
    "TasksHaveBeenTakenByEndpointEvent": ("Tasks taken by endpoint", ("endpointId",)),
    "DroneFileSavedEvent": ("DRONE file saved", ("taskId", "endpointId")),
    "OrganizationCreatedEvent": ("Organization created", ("name", "id")),
    "OrganizationDeletedEvent": ("Organization deleted", ("name", "id")),
    "OrganizationUpdatedEvent": ("Organization updated", ("name",)),
    "RelayServerRegisteredEvent": ("Relay server registered", ("name", "id")),
    "RelayServerRemovedEvent": ("Relay server removed", ("name", "id")),
    "TaskAssignedToEndpointEvent": ("Task assigned to endpoint", ("taskName", "endpointName")),
    "TaskAssignmentCancelledEvent": (
        "Task assignment cancelled",
        ("taskName", "endpointName"),
    ),
    "TaskAssignmentDeletedEvent": ("Task assignment deleted", ("taskName", "endpointName")),
    "TaskCancelledEvent": ("Task cancelled", ("taskName", "taskId")),
    "TaskCompletedEvent": ("Task completed", ("name", "id")),
    "TaskDeletedEvent": ("Task deleted", ("taskName", "taskId")),
    "TaskScheduledForEndpointEvent": (
        "Task scheduled for endpoint",
        ("taskName", "endpointName"),
    ),
    "TriageRuleMatchedEvent": ("Triage rule matched", ("ruleName", "endpointName")),
}

# Data keys whose values are links into AIR, with the label a reader sees.
LINK_FIELDS: dict[str, str] = {
    "taskDetailsUrl": "Task details",
    "reportURL": "Report",
    "reportUrl": "Report",
}

_SENSITIVE = re.compile(r"token|secret|password|passwd|apikey|api_key|credential", re.IGNORECASE)
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def humanize(name: str) -> str:
    """``endpointName`` -> ``Endpoint name``; ``TaskCreatedEvent`` -> ``Task created event``."""
    words = _WORDS.findall(name) or [name]
    text = " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words)
    return text[:1].upper() + text[1:]


def event_title(event_name: str) -> str:
    """The readable title of an event type; an unknown type gets its name spelled out."""
    known = EVENT_TITLES.get(event_name)
    if known:
        return known[0]
    return humanize(event_name.removesuffix("Event")) or "AIR event"


def scalar_text(value: Any) -> str:
    """A data value as one line of text (lists joined, nested objects compact)."""
    if isinstance(value, list):
        return ", ".join(scalar_text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {scalar_text(v)}" for k, v in value.items())
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def event_subject(event_name: str, data: Mapping[str, Any]) -> str | None:
    """What the event is about (a case name, a rule and an endpoint ...), when data says."""
    keys = EVENT_TITLES.get(event_name, ("", ("name", "id")))[1]
    parts = [scalar_text(data[k]) for k in keys if data.get(k) not in (None, "", [], {})]
    if not parts:
        return None
    if len(keys) == 2 and keys[1].startswith("endpoint"):
        # "Rule X on Endpoint Y": the second key names where it happened.
        return " on ".join(parts)
    return parts[0]  # otherwise the keys are alternatives: a name, else an id


def event_summary(event_name: str, data: Mapping[str, Any]) -> str:
    """One line: ``Triage rule matched: Rule Name on Endpoint Name``."""
    subject = event_subject(event_name, data)
    title = event_title(event_name)
    return f"{title}: {subject}" if subject else title


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def absolute_link(value: str, console_url: str | None) -> str | None:
    """An AIR link as an absolute http(s) URL, or None when it cannot be one.

    AIR writes its links relative to its console (``/#/task-details/12345``); with
    ``console_url`` (``air.console_url``) such a link is appended to it, so a console behind
    a path prefix keeps the prefix. A link with a scheme other than http(s), or one starting
    with ``//`` (another host), never becomes a link.
    """
    if value.lower().startswith(("http://", "https://")):
        return value
    if not console_url or not value or _SCHEME.match(value) or value.startswith("//"):
        return None
    root = console_url.rstrip("/")
    return root + value if value.startswith("/") else f"{root}/{value}"


def link_values(data: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(data key, label, value as AIR wrote it) for each AIR link field in the data."""
    return [
        (key, label, data[key])
        for key, label in LINK_FIELDS.items()
        if isinstance(data.get(key), str) and data[key]
    ]


def event_links(data: Mapping[str, Any], console_url: str | None = None) -> list[tuple[str, str]]:
    """(label, url) for each AIR link in the data that is, or with ``console_url`` becomes,
    an absolute http(s) URL."""
    out: list[tuple[str, str]] = []
    for _key, label, value in link_values(data):
        url = absolute_link(value, console_url)
        if url is not None:
            out.append((label, url))
    return out


def is_sensitive(key: str) -> bool:
    """Whether a data field holds a credential (shown masked in chat messages)."""
    return bool(_SENSITIVE.search(key))


def masked(value: Any) -> str:
    """A credential field's value as chat messages show it: ``…`` and its last 4 characters."""
    return mask(scalar_text(value))


def _parse_float(text: str) -> float | str:
    # 1e400 is valid JSON but Python reads it as inf, which json.dumps cannot write as JSON:
    # keep such a number as its text rather than render a message a sink rejects.
    value = float(text)
    return value if math.isfinite(value) else text


def event_data(body: bytes) -> tuple[Any, bool]:
    """The envelope's ``data`` from the bytes AIR sent, and whether they could be read at all
    (ingest checked them, but a sender must not fail on what it renders)."""
    try:
        envelope = json.loads(body.decode("utf-8", errors="replace"), parse_float=_parse_float)
    except (ValueError, RecursionError):
        return None, False
    if not isinstance(envelope, dict):
        return None, True
    return envelope.get("data"), True


# --- severity ------------------------------------------------------------------------------

# How urgent each event type is, for PagerDuty's ``severity`` (an unknown type is ``info``):
# a triage rule match is a detection; failures and changes to isolation or deployment tokens
# are errors; deletions, removals and cancellations are warnings.
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


def severity_for(event_name: str) -> str:
    return SEVERITY.get(event_name, DEFAULT_SEVERITY)
