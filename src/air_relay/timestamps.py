"""Timestamps as the API and the logs write them (RFC 3339, UTC, ``Z``)."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime | None) -> str | None:
    """Full precision, e.g. ``2026-11-23T13:45:26.661664Z``; None stays None.

    The audit log and the ``delivery_failed`` log line both use this, so an operator can
    match a log line to its audit row by value.
    """
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def rfc3339_seconds(value: datetime) -> str:
    """Second precision, as the Scanner event-sink API shows them: ``2024-05-09T20:01:32Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
