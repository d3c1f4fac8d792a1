"""Per-key ordering (the sink option ``ordering``): which data field of each AIR event type
carries its case, endpoint or task key, and an event's keys.

The catalog decides: for ``case`` the field is ``caseId``, or ``id`` on a Case* event;
likewise ``endpointId`` / Endpoint* and ``taskId`` / Task*. An event type without such a
parameter, and an event type the catalog does not know, has no key: it is unordered.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from air_relay.events import catalog, event_data
from air_relay.model import ORDERING_KINDS, OrderKeys

# kind -> (the data field naming the key, the event-name prefix whose own ``id`` is the key)
_KEY_FIELDS: dict[str, tuple[str, str]] = {
    "case": ("caseId", "Case"),
    "endpoint": ("endpointId", "Endpoint"),
    "task": ("taskId", "Task"),
}


@cache
def key_fields() -> dict[str, tuple[str | None, ...]]:
    """eventName -> the data field of each kind (in ORDERING_KINDS order), None for none."""
    out: dict[str, tuple[str | None, ...]] = {}
    for name, event in catalog().items():
        fields: list[str | None] = []
        for kind in ORDERING_KINDS:
            field, prefix = _KEY_FIELDS[kind]
            if field in event.parameters:
                fields.append(field)
            elif name.startswith(prefix) and "id" in event.parameters:
                fields.append("id")
            else:
                fields.append(None)
        out[name] = tuple(fields)
    return out


def _key_text(value: Any) -> str | None:
    # AIR's ids are strings or integers; anything else (absent, null, a list) is no key.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def order_keys(event_name: str, data: Any) -> OrderKeys:
    """The event's case, endpoint and task keys (None where it has none)."""
    fields = key_fields().get(event_name)
    if fields is None or not isinstance(data, Mapping):
        return (None, None, None)
    case, endpoint, task = (_key_text(data.get(f)) if f else None for f in fields)
    return (case, endpoint, task)


def order_keys_of_body(event_name: str, body: bytes) -> OrderKeys:
    """The same, from the bytes AIR sent (events read back from the spool)."""
    data, _ = event_data(body)
    return order_keys(event_name, data)
