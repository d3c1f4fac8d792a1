"""The 28 AIR event types and their documented ``data`` parameters.

AIR's documentation is not a strict schema, so a mismatch is reported (logged and counted)
but never rejects an event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


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
