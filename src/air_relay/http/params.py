"""Parsing of management-API parameters (query strings and JSON fields), shared by the audit
log and the delivery API: every bad value is a 400 ``invalid_argument`` naming the parameter."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from air_relay.http.errors import ApiError

_SPACE_OFFSET = re.compile(r"(?<=\d) (\d{2}:\d{2})$")


def bad_param(name: str, message: str) -> ApiError:
    return ApiError(400, "invalid_argument", f"{name} {message}.")


def parse_time(name: str, value: str) -> datetime:
    # An unencoded "+" in a query string arrives as a space: "...T12:00:00 02:00".
    value = _SPACE_OFFSET.sub(r"+\1", value)
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise bad_param(name, "must be an RFC 3339 timestamp, e.g. 2025-01-28T12:00:00Z") from exc
    if parsed.tzinfo is None:
        raise bad_param(name, "must carry a time zone (Z or +hh:mm)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:
        raise bad_param(name, "is out of range") from exc


def int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise bad_param(name, "must be an integer") from exc
    if not low <= number <= high:
        raise bad_param(name, f"must be between {low} and {high}")
    return number


def uuid_param(name: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise bad_param(name, "must be a UUID") from exc
