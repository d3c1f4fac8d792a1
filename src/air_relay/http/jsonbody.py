"""Strict JSON request bodies: size-limited, UTF-8, no NaN/Infinity, clear errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from air_relay.http.errors import ApiError
from air_relay.http.state import CONFIG


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def is_json_content_type(request: web.Request) -> bool:
    ctype = request.content_type.lower()
    return ctype == "application/json" or (
        ctype.startswith("application/") and ctype.endswith("+json")
    )


async def read_json(request: web.Request, max_bytes: int) -> tuple[bytes, Any]:
    """The raw body and its parsed value; 413 / 400 ``invalid_json`` as ApiError."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "payload_too_large", f"The body exceeds {max_bytes} bytes.")
    raw = await request.read()  # bounded by the app's client_max_size
    if len(raw) > max_bytes:
        raise ApiError(413, "payload_too_large", f"The body exceeds {max_bytes} bytes.")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid UTF-8 JSON: {exc}") from exc
    return raw, value


async def read_api_json(request: web.Request) -> Any:
    """A management-API body: must be JSON (any JSON content type, or none declared)."""
    if request.content_type not in ("application/octet-stream", "") and not is_json_content_type(
        request
    ):
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    _, value = await read_json(request, request.app[CONFIG].server.max_body_bytes)
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_argument", "The body must be a JSON object.")
    return value
