"""Event sink arguments: validation of the Scanner-style request bodies, merging, masking.

HTTP-free, so the rules are the same whoever calls them. Every problem is an
``InvalidArgument`` naming the field (``event_sink_args.Webhook.url``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from air_relay.config import Config
from air_relay.db.repository import Sink, storable
from air_relay.sinks.webhook import SIGNING_PREFIX, decode_secret
from air_relay.timestamps import rfc3339_seconds

SINK_TYPES = ("Slack", "Webhook", "PagerDuty")
MAX_TEXT = 1024
# Headers air-relay sets itself; a sink's extra headers may not replace them.
RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "host",
        "user-agent",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# What an Authorization header can carry after "Bearer ": visible ASCII, no spaces.
_BEARER_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
ELLIPSIS = "\u2026"


class InvalidArgument(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


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


def _check_keys(args: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in args:
        if key not in allowed:
            raise InvalidArgument(f"{prefix}.{key}", "is not a known argument")


def _url(value: Any, field: str) -> str:
    url = text_field(value, field, limit=2048)
    if _URL_FORBIDDEN.search(url):
        raise InvalidArgument(field, "must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument(field, "must be an http or https URL")
    try:
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        raise InvalidArgument(field, f"is not a valid URL ({exc})") from exc
    if not host:
        raise InvalidArgument(field, "must name a host")
    return url


def _secret(value: Any, field: str) -> str:
    secret = text_field(value, field, limit=256)
    if not secret.startswith(SIGNING_PREFIX):
        raise InvalidArgument(
            field, f"must be a Standard Webhooks key starting with {SIGNING_PREFIX}"
        )
    try:
        key = decode_secret(secret)
    except ValueError as exc:
        raise InvalidArgument(field, "must be whsec_ followed by base64") from exc
    if len(key) < 16:
        raise InvalidArgument(field, "must hold at least 16 bytes of key")
    return secret


def _headers(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidArgument(field, "must be an object of header names to string values")
    if len(value) > 32:
        raise InvalidArgument(field, "must have at most 32 headers")
    out: dict[str, str] = {}
    for name, val in value.items():
        if not _HEADER_NAME.match(name):
            raise InvalidArgument(f"{field}.{name}", "is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidArgument(f"{field}.{name}", "is set by air-relay and cannot be replaced")
        if not isinstance(val, str) or any(c in val for c in "\r\n\0") or not storable(val):
            raise InvalidArgument(f"{field}.{name}", "must be a single-line string")
        out[name] = val
    return out


def _webhook(args: dict[str, Any], prefix: str) -> dict[str, Any]:
    _check_keys(args, {"url", "secret", "bearer_token", "headers"}, prefix)
    if "url" not in args:
        raise InvalidArgument(f"{prefix}.url", "is required")
    out: dict[str, Any] = {"url": _url(args["url"], f"{prefix}.url")}
    if args.get("secret") is not None:
        out["secret"] = _secret(args["secret"], f"{prefix}.secret")
    if args.get("bearer_token") is not None:
        field = f"{prefix}.bearer_token"
        token = text_field(args["bearer_token"], field, limit=4096)
        if not _BEARER_TOKEN.match(token):
            raise InvalidArgument(field, "must be visible ASCII characters without spaces")
        out["bearer_token"] = token
    if args.get("headers") is not None:
        out["headers"] = _headers(args["headers"], f"{prefix}.headers")
    return out


def _slack(args: dict[str, Any], prefix: str, cfg: Config) -> dict[str, Any]:
    _check_keys(args, {"channel_id", "channel", "slack_integration_id"}, prefix)
    out: dict[str, Any] = {}
    for key in ("channel_id", "channel"):
        if args.get(key) is not None:
            out[key] = text_field(args[key], f"{prefix}.{key}", limit=256)
    if not out:
        raise InvalidArgument(f"{prefix}.channel_id", "is required")
    if "slack_integration_id" not in args:
        raise InvalidArgument(f"{prefix}.slack_integration_id", "is required")
    integration = text_field(args["slack_integration_id"], f"{prefix}.slack_integration_id")
    if integration not in cfg.slack.integrations:
        raise InvalidArgument(
            f"{prefix}.slack_integration_id", "names no Slack integration in the configuration"
        )
    out["slack_integration_id"] = integration
    return out


def _pagerduty(args: dict[str, Any], prefix: str) -> dict[str, Any]:
    _check_keys(args, {"integration_key"}, prefix)
    if "integration_key" not in args:
        raise InvalidArgument(f"{prefix}.integration_key", "is required")
    return {
        "integration_key": text_field(
            args["integration_key"], f"{prefix}.integration_key", limit=128
        )
    }


def parse_sink_args(
    raw: Any, cfg: Config, existing: Sink | None = None, field: str = "event_sink_args"
) -> tuple[str, dict[str, Any]]:
    """Validate ``event_sink_args``; with ``existing`` of the same type, merge into its args.

    A merge keeps what the update leaves out (a PUT with only a new ``channel_id`` keeps the
    integration), a ``null`` removes an optional argument, and a masked value sent back
    unchanged (as a client that round-trips a GET would) keeps the stored secret.
    """
    if not isinstance(raw, dict) or len(raw) != 1:
        raise InvalidArgument(
            field, "must be an object with exactly one of Slack, Webhook, PagerDuty"
        )
    ((sink_type, args),) = raw.items()
    if sink_type not in SINK_TYPES:
        raise InvalidArgument(field, f"{sink_type!r} is not one of Slack, Webhook, PagerDuty")
    prefix = f"{field}.{sink_type}"
    if not isinstance(args, dict):
        raise InvalidArgument(prefix, "must be an object")
    if existing is not None and existing.sink_type == sink_type:
        args = _merge(existing.args, args, sink_type)
    validators: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
        "Webhook": _webhook,
        "Slack": lambda a, p: _slack(a, p, cfg),
        "PagerDuty": _pagerduty,
    }
    return sink_type, validators[sink_type](args, prefix)


def _merge(old: dict[str, Any], new: dict[str, Any], sink_type: str) -> dict[str, Any]:
    merged = dict(old)
    if sink_type == "Slack" and any(new.get(k) is not None for k in ("channel_id", "channel")):
        # channel_id and the deprecated channel name one destination: an update naming either
        # replaces both, or the old one would go on deciding where messages are posted.
        merged.pop("channel_id", None)
        merged.pop("channel", None)
    for key, value in new.items():
        if (
            key in ("secret", "bearer_token")
            and value is not None
            and value == mask(key, old.get(key))
        ):
            continue
        merged[key] = value
    return {k: v for k, v in merged.items() if v is not None}


def mask(kind: str, value: Any) -> Any:
    """The write-only form of a secret: ``whsec_…abcd`` for signing keys, ``…abcd`` otherwise."""
    if not isinstance(value, str):
        return value
    tail = value[-4:] if len(value) >= 12 else ""
    return f"{SIGNING_PREFIX}{ELLIPSIS}{tail}" if kind == "secret" else f"{ELLIPSIS}{tail}"


def masked_args(args: dict[str, Any]) -> dict[str, Any]:
    """The args as ``configuration`` echoes them: everything but the write-only secrets."""
    out = dict(args)
    for key in ("secret", "bearer_token"):
        if key in out:
            out[key] = mask(key, out[key])
    return out


def parse_events(value: Any, field: str = "events") -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidArgument(field, "must be a list of event names")
    return [text_field(v, f"{field}[{i}]", limit=256) for i, v in enumerate(value)]


def parse_organization_ids(value: Any, field: str = "organization_ids") -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidArgument(field, "must be a list of organization ids")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int | str) or v == "":
            raise InvalidArgument(f"{field}[{i}]", "must be an integer or a non-empty string")
        out.append(check_text(str(v), f"{field}[{i}]"))
    return out


def parse_active(value: Any, field: str = "active") -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(field, "must be true or false")
    return value


def render_sink(sink: Sink) -> dict[str, Any]:
    """The Scanner event-sink object, plus the air-relay extensions."""
    return {
        "id": str(sink.id),
        "tenant_id": sink.tenant_id,
        "name": sink.name,
        "description": sink.description,
        "event_sink_type": sink.sink_type,
        "configuration": {sink.sink_type: masked_args(sink.args)},
        "events": sink.events,
        "organization_ids": sink.organization_ids,
        "active": sink.active,
        "created_at": rfc3339_seconds(sink.created_at),
        "updated_at": rfc3339_seconds(sink.updated_at),
    }
