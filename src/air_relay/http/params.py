"""Parsing of management-API parameters (query strings and JSON fields) and keyset pages,
shared by the audit log and the delivery API: every bad value is a 400 ``invalid_argument``
naming the parameter."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from air_relay.db.repository import storable
from air_relay.http.errors import ApiError

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

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


def path_uuid(request: web.Request, not_found: str) -> uuid.UUID:
    """The path's ``{id}``; an id that is not a UUID names nothing: 404 ``not_found``."""
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError as exc:
        raise ApiError(404, "not_found", not_found) from exc


def text_param(name: str, value: str) -> str:
    if not storable(value):
        raise bad_param(name, "contains NUL characters or unpaired surrogates")
    return value


def optional(query: Mapping[str, str], name: str, parse: Callable[[str, str], T]) -> T | None:
    """``parse(name, value)`` of a query parameter, None when it is absent or empty."""
    value = query.get(name)
    return parse(name, value) if value else None


def page_limit(query: Mapping[str, str]) -> int:
    return optional(query, "limit", lambda n, v: int_param(n, v, 1, MAX_LIMIT)) or DEFAULT_LIMIT


def encode_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def cursor_text(cursor: str) -> str:
    """The text inside a cursor made by ``encode_cursor`` (padding optional)."""
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise bad_cursor() from exc


def bad_cursor() -> ApiError:
    return bad_param("cursor", "is not a cursor this API returned")


def keyset_page(
    rows: Sequence[T], limit: int, cursor_of: Callable[[T], str]
) -> tuple[Sequence[T], dict[str, Any] | None]:
    """The page of ``rows`` (fetched with ``limit + 1``: one more tells another page exists)
    and its ``pagination`` object."""
    page = rows[:limit]
    if len(rows) > limit:
        return page, {"next_cursor": encode_cursor(cursor_of(page[-1]))}
    return page, None
