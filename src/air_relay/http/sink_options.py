"""The sink options ``ordering`` and ``fallback_event_sink_id``: read from a create or update
body, checked (400 naming the field), and shown in the sink object.

Absent options keep today's behaviour: no ordering, no failover. A fallback must be a sink of
the same tenant, not the sink itself, and must not lead back to it along the fallbacks'
chain (a cycle would fail a dead event over for ever).

``ordering`` and ``digest`` are refused together: the claim's ordering check waits only on a
key's pending deliveries, so a delivery held in a digest would not block the later events of
its key, and they would be sent before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg

from air_relay.db import repository as repo
from air_relay.http.params import parse_uuid
from air_relay.model import ORDERING_NONE, ORDERINGS, Sink, SinkFields
from air_relay.validation import InvalidArgument

OPTION_FIELDS = ("ordering", "fallback_event_sink_id")
FALLBACK = "fallback_event_sink_id"
# Longer chains are refused: an event would wait out that many retry schedules.
MAX_CHAIN = 10


def parse_ordering(value: Any) -> str:
    if value is None:
        return ORDERING_NONE
    if not isinstance(value, str) or value not in ORDERINGS:
        raise InvalidArgument("ordering", "must be one of " + ", ".join(ORDERINGS))
    return value


def parse_fallback(value: Any) -> uuid.UUID | None:
    if value is None:
        return None
    parsed = parse_uuid(value)
    if parsed is None:
        raise InvalidArgument(FALLBACK, "must be the id (a UUID) of an event sink, or null")
    return parsed


def with_options(
    fields: SinkFields, body: dict[str, Any], current: Sink | None = None
) -> SinkFields:
    """``fields`` with the options the body names; the others as ``current`` has them (an
    update), or absent (a create)."""
    ordering = current.ordering if current else ORDERING_NONE
    fallback = current.fallback_event_sink_id if current else None
    if "ordering" in body:
        ordering = parse_ordering(body["ordering"])
    if FALLBACK in body:
        fallback = parse_fallback(body[FALLBACK])
    check_ordering_and_digest(ordering, fields.digest, body)
    return dataclasses.replace(fields, ordering=ordering, fallback_event_sink_id=fallback)


def check_ordering_and_digest(ordering: str, digest: object, body: dict[str, Any]) -> None:
    """A 400 when the sink would have both ``ordering`` and ``digest``; it names the option
    the body sets (``digest`` when it sets both)."""
    if ordering == ORDERING_NONE or digest is None:
        return
    field = "ordering" if "digest" not in body else "digest"
    raise InvalidArgument(
        field,
        "cannot be combined with "
        + ("digest" if field == "ordering" else "ordering")
        + " yet: a delivery held in a digest would not hold back the later events of its key;"
        " turn the other option off first",
    )


def _no_such_sink(fields: SinkFields) -> InvalidArgument:
    return InvalidArgument(FALLBACK, f"names no event sink of tenant {fields.tenant_id}")


async def check_fallback(
    pool: asyncpg.Pool, fields: SinkFields, sink_id: uuid.UUID | None = None
) -> None:
    """A 400 naming the fallback unless it is a sink of the same tenant, not ``sink_id``
    itself, whose chain of fallbacks neither comes back to ``sink_id`` nor runs too long."""
    fallback = fields.fallback_event_sink_id
    if fallback is None:
        return
    if fallback == sink_id:
        raise InvalidArgument(FALLBACK, "must not be the sink itself")
    chain = await repo.fallback_chain(pool, fallback, MAX_CHAIN + 1)
    if not chain or chain[0][1] != fields.tenant_id:
        raise _no_such_sink(fields)
    if sink_id is not None and any(link == sink_id for link, _ in chain):
        raise InvalidArgument(
            FALLBACK, "would make a cycle: its chain of fallbacks leads back to this sink"
        )
    if len(chain) > MAX_CHAIN:
        raise InvalidArgument(FALLBACK, f"starts a chain of more than {MAX_CHAIN} fallbacks")


@contextlib.contextmanager
def fallback_gone(fields: SinkFields) -> Iterator[None]:
    """The write's foreign-key violation (the fallback was deleted since it was checked) as
    the same 400 the check gives."""
    try:
        yield
    except asyncpg.ForeignKeyViolationError as exc:
        raise _no_such_sink(fields) from exc


def render_options(sink: Sink) -> dict[str, Any]:
    fallback = sink.fallback_event_sink_id
    return {"ordering": sink.ordering, FALLBACK: str(fallback) if fallback else None}
