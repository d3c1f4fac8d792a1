"""Parsing of management-API parameters (query strings, JSON fields, path ids) and keyset
pages, shared by every API handler: a bad value is an ``InvalidArgument`` naming the
parameter (400), an id in the path that names nothing a 404."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from air_relay.http.errors import ApiError
from air_relay.validation import InvalidArgument, storable

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_SPACE_OFFSET = re.compile(r"(?<=\d) (\d{2}:\d{2})$")


def parse_time(name: str, value: str) -> datetime:
    # An unencoded "+" in a query string arrives as a space: "...T12:00:00 02:00".
    value = _SPACE_OFFSET.sub(r"+\1", value)
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as exc:
        raise InvalidArgument(
            name, "must be an RFC 3339 timestamp, e.g. 2025-01-28T12:00:00Z"
        ) from exc
    if parsed.tzinfo is None:
        raise InvalidArgument(name, "must carry a time zone (Z or +hh:mm)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidArgument(name, "is out of range") from exc


def int_param(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise InvalidArgument(name, "must be an integer") from exc
    if not low <= number <= high:
        raise InvalidArgument(name, f"must be between {low} and {high}")
    return number


def parse_uuid(value: object) -> uuid.UUID | None:
    """``value`` as a UUID, None when it is not a string holding one."""
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def uuid_param(name: str, value: str) -> uuid.UUID:
    parsed = parse_uuid(value)
    if parsed is None:
        raise InvalidArgument(name, "must be a UUID")
    return parsed


def path_uuid(request: web.Request, not_found: str) -> uuid.UUID:
    """The path's ``{id}``; an id that is not a UUID names nothing: 404 ``not_found``."""
    parsed = parse_uuid(request.match_info["id"])
    if parsed is None:
        raise ApiError(404, "not_found", not_found)
    return parsed


def text_param(name: str, value: str) -> str:
    if not storable(value):
        raise InvalidArgument(name, "contains NUL characters or unpaired surrogates")
    return value


def optional(query: Mapping[str, str], name: str, parse: Callable[[str, str], T]) -> T | None:
    """``parse(name, value)`` of a query parameter, None when it is absent or empty."""
    value = query.get(name)
    return parse(name, value) if value else None


def page_limit(query: Mapping[str, str], default: int = DEFAULT_LIMIT) -> int:
    return optional(query, "limit", lambda n, v: int_param(n, v, 1, MAX_LIMIT)) or default


def encode_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def cursor_text(cursor: str) -> str:
    """The text inside a cursor made by ``encode_cursor`` (padding optional)."""
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise bad_cursor() from exc


def bad_cursor() -> InvalidArgument:
    return InvalidArgument("cursor", "is not a cursor this API returned")


def time_id_cursor(at: datetime, ident: uuid.UUID) -> str:
    """The keyset of a row ordered by (timestamp, id), as cursor text."""
    return f"{at.astimezone(UTC).isoformat()}|{ident}"


def decode_time_id_cursor(name: str, cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (timestamp, id) keyset inside a cursor made from ``time_id_cursor``."""
    stamp, sep, ident = cursor_text(cursor).partition("|")
    try:
        at = datetime.fromisoformat(stamp)
        if not sep or at.tzinfo is None:
            raise ValueError(cursor)
        return at.astimezone(UTC), uuid.UUID(ident)
    except (ValueError, OverflowError) as exc:
        raise bad_cursor() from exc


def keyset_page(
    rows: Sequence[T], limit: int, cursor_of: Callable[[T], str]
) -> tuple[Sequence[T], dict[str, Any] | None]:
    """The page of ``rows`` (fetched with ``limit + 1``: one more tells another page exists)
    and its ``pagination`` object."""
    page = rows[:limit]
    if len(rows) > limit:
        return page, {"next_cursor": encode_cursor(cursor_of(page[-1]))}
    return page, None
