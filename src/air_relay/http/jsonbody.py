"""Strict JSON request bodies: size-limited, UTF-8, no NaN/Infinity, clear errors."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from air_relay.http.errors import ApiError
from air_relay.http.state import CONFIG


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e999999 is valid JSON text but no number a receiver can take: Python would make it
    # inf, and re-encode it for Slack or PagerDuty as the invalid JSON word Infinity.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


# One decoder for every body: json.loads with these hooks would build (and compile a scanner
# for) a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _loads(text: str) -> Any:
    """json.loads(text, parse_constant=..., parse_float=...), the same checks in the same
    order."""
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


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
        value = _loads(raw.decode("utf-8"))
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
