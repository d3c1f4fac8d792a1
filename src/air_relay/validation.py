"""Checks shared by the input edges (ingest, the management API, sink arguments).

A bad field is an ``InvalidArgument`` naming it (``event_sink_args.Webhook.url``), which the
management API answers as ``400 invalid_argument`` with the message "<field> <problem>.".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MAX_TEXT = 1024


class InvalidArgument(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def storable(value: str) -> bool:
    """PostgreSQL text and jsonb take neither NUL nor an unpaired surrogate (JSON allows both)."""
    if "\0" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: str, field: str) -> str:
    if not storable(value):
        raise InvalidArgument(field, "must not contain NUL characters or unpaired surrogates")
    return value


def text_field(value: Any, field: str, *, allow_empty: bool = False, limit: int = MAX_TEXT) -> str:
    """A string argument that fits the database; InvalidArgument naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise InvalidArgument(field, "must be a string")
    check_text(value, field)
    if not allow_empty and not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > limit:
        raise InvalidArgument(field, f"must be at most {limit} characters")
    return value


def _field(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def required(body: Mapping[str, Any], name: str, prefix: str = "") -> Any:
    """``body[name]``; InvalidArgument when it is missing or null."""
    if body.get(name) is None:
        raise InvalidArgument(_field(prefix, name), "is required")
    return body[name]


def reject_unknown(
    body: Mapping[str, Any], allowed: Iterable[str], prefix: str = "", *, noun: str = "field"
) -> None:
    """InvalidArgument naming the first key of ``body`` that is not in ``allowed``."""
    known = set(allowed)
    for key in body:
        if key not in known:
            raise InvalidArgument(_field(prefix, str(key)), f"is not a known {noun}")
