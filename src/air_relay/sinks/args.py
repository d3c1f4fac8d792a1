"""The rules for each sink type's arguments (``event_sink_args.<Type>``) and for the fields
every sink has (``events``, ``organization_ids``, ``active``): validation, merging an update
into stored arguments, and masking the write-only ones.

HTTP-free: every problem is an ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from air_relay.config import Config
from air_relay.redaction import mask
from air_relay.sinks.signing import SIGNING_PREFIX, decode_secret
from air_relay.sinks.templates import parse_template
from air_relay.validation import (
    InvalidArgument,
    check_text,
    reject_unknown,
    required,
    storable,
    text_field,
)

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
MAX_HEADERS = 32
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# What an Authorization header can carry after "Bearer ": visible ASCII, no spaces.
_BEARER_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")

# (args, field prefix, config) -> the validated args
ArgsParser = Callable[[dict[str, Any], str, Config], dict[str, Any]]


@dataclass(frozen=True)
class ArgRules:
    """How one sink type's arguments are checked, merged and shown."""

    parse: ArgsParser
    # Write-only arguments, shown masked: name -> the prefix its mask keeps.
    secrets: Mapping[str, str] = field(default_factory=dict)
    # Arguments that name one thing between them: an update naming any replaces them all.
    alternatives: tuple[str, ...] = ()
    # The argument holding a URL that the egress guard must check, if any.
    egress_url: str | None = None

    def merge(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """``new`` (an update) merged into ``old``: what it leaves out is kept, a ``null``
        removes an optional argument, and a masked secret sent back unchanged (as a client
        that round-trips a GET would) keeps the stored one."""
        merged = dict(old)
        if any(new.get(k) is not None for k in self.alternatives):
            for key in self.alternatives:
                merged.pop(key, None)
        for key, value in new.items():
            if key in self.secrets and value is not None and value == self.masked(key, old):
                continue
            merged[key] = value
        return {k: v for k, v in merged.items() if v is not None}

    def masked(self, key: str, args: Mapping[str, Any]) -> Any:
        value = args.get(key)
        return mask(value, self.secrets[key]) if isinstance(value, str) else value

    def shown(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The args as ``configuration`` echoes them: write-only ones masked."""
        return {k: self.masked(k, args) if k in self.secrets else v for k, v in args.items()}


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
    if len(value) > MAX_HEADERS:
        raise InvalidArgument(field, f"must have at most {MAX_HEADERS} headers")
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


def _bearer_token(value: Any, field: str) -> str:
    token = text_field(value, field, limit=4096)
    if not _BEARER_TOKEN.match(token):
        raise InvalidArgument(field, "must be visible ASCII characters without spaces")
    return token


def _webhook(args: dict[str, Any], prefix: str, cfg: Config) -> dict[str, Any]:
    known = ("url", "secret", "bearer_token", "headers", "template")
    reject_unknown(args, known, prefix, noun="argument")
    out: dict[str, Any] = {"url": _url(required(args, "url", prefix), f"{prefix}.url")}
    if args.get("secret") is not None:
        out["secret"] = _secret(args["secret"], f"{prefix}.secret")
    if args.get("bearer_token") is not None:
        out["bearer_token"] = _bearer_token(args["bearer_token"], f"{prefix}.bearer_token")
    if args.get("headers") is not None:
        out["headers"] = _headers(args["headers"], f"{prefix}.headers")
    if args.get("template") is not None:
        out["template"] = parse_template(
            args["template"], f"{prefix}.template", cfg.air.console_url or None
        )
    return out


def _slack(args: dict[str, Any], prefix: str, cfg: Config) -> dict[str, Any]:
    reject_unknown(args, ("channel_id", "channel", "slack_integration_id"), prefix, noun="argument")
    out: dict[str, Any] = {}
    for key in ("channel_id", "channel"):
        if args.get(key) is not None:
            out[key] = text_field(args[key], f"{prefix}.{key}", limit=256)
    if not out:
        raise InvalidArgument(f"{prefix}.channel_id", "is required")
    field = f"{prefix}.slack_integration_id"
    integration = text_field(required(args, "slack_integration_id", prefix), field)
    if integration not in cfg.slack.integrations:
        raise InvalidArgument(field, "names no Slack integration in the configuration")
    out["slack_integration_id"] = integration
    return out


def _pagerduty(args: dict[str, Any], prefix: str, _cfg: Config) -> dict[str, Any]:
    reject_unknown(args, ("integration_key",), prefix, noun="argument")
    key = required(args, "integration_key", prefix)
    return {"integration_key": text_field(key, f"{prefix}.integration_key", limit=128)}


WEBHOOK = ArgRules(
    parse=_webhook,
    secrets={"secret": SIGNING_PREFIX, "bearer_token": ""},
    egress_url="url",
)
# channel_id and the deprecated channel name one destination: an update naming either replaces
# both, or the old one would go on deciding where messages are posted.
SLACK = ArgRules(parse=_slack, alternatives=("channel_id", "channel"))
PAGERDUTY = ArgRules(parse=_pagerduty)


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
