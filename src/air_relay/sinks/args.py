"""The rules for each sink type's arguments (``event_sink_args.<Type>``) and for the fields
every sink has (``events``, ``organization_ids``, ``active``): validation, merging an update
into stored arguments, and masking the write-only ones.

Every argument is input from people the relay does not trust: URLs are parsed and stored
the way the HTTP client will read them (``yarl``), sizes and counts are capped, header
values are single-line printable ASCII, and every credential (signing secret, bearer token,
URL password, secret-looking header values, PagerDuty key) is write-only.

HTTP-free: every problem is an ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp.helpers import is_ip_address
from yarl import URL

from air_relay.config import Config
from air_relay.events import catalog
from air_relay.redaction import ELLIPSIS, REDACTED, basic_credentials, mask
from air_relay.sinks.signing import SIGNING_PREFIX, decode_secret
from air_relay.sinks.templates import parse_template
from air_relay.validation import (
    InvalidArgument,
    check_text,
    reject_unknown,
    required,
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
# Hop-by-hop and proxy headers: they steer the connection or a proxy, not the receiver.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "te",
        "trailer",
        "upgrade",
        "expect",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
    }
)
# A header whose name contains one of these carries a credential: write-only, redacted.
SECRET_HEADER_HINTS = (
    "auth",
    "key",
    "token",
    "secret",
    "cookie",
    "passw",
    "credential",
    "session",
    "signature",
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# A header value: printable ASCII, spaces and tabs (no obs-text, no other controls).
_HEADER_VALUE = re.compile(r"^[\x20-\x7e\t]*$")
# What an Authorization header can carry after "Bearer ": visible ASCII, no spaces.
_BEARER_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")

# (args, field prefix, config) -> the validated args
ArgsParser = Callable[[dict[str, Any], str, Config], dict[str, Any]]


def secret_header(name: str) -> bool:
    lowered = name.lower()
    return any(hint in lowered for hint in SECRET_HEADER_HINTS)


@dataclass(frozen=True)
class WriteOnly:
    """How one write-only argument is shown, and recognised when a client sends back what
    it was shown (a GET round-tripped into a PUT keeps the stored value)."""

    show: Callable[[Any], Any]

    def restore(self, given: Any, stored: Any) -> Any:
        return stored if given == self.show(stored) else given

    def resent(self, given: Any, stored: Any) -> bool:
        """Whether an update states this value anew (not as the masked form it was shown)."""
        return bool(given != self.show(stored))


def masked_text(prefix: str = "") -> WriteOnly:
    return WriteOnly(lambda value: mask(value, prefix) if isinstance(value, str) else value)


def _shown_url(url: Any) -> Any:
    """A URL with its user info and the values of secret-looking query parameters (Google
    Chat's ``key`` and ``token``, say) replaced by ``***``."""
    if not isinstance(url, str):
        return url
    parsed = URL(url)
    if parsed.raw_user is not None:
        parsed = parsed.with_user(REDACTED)
        if parsed.password is not None:
            parsed = parsed.with_password(REDACTED)
    if any(secret_header(name) for name in parsed.query):
        parsed = parsed.with_query(
            [(k, REDACTED if secret_header(k) else v) for k, v in parsed.query.items()]
        )
    return str(parsed)


def url_credentials(url: str) -> list[str]:
    """What of a URL is a credential: its user info, and secret-looking query values."""
    parsed = URL(url)
    found = [v for k, v in parsed.query.items() if secret_header(k) and v]
    if parsed.raw_user is not None:
        user, password = parsed.user or "", parsed.password or ""
        found += [s for s in (user, password) if s]
        found += basic_credentials(user, password)
    return found


def _shown_headers(headers: Any) -> Any:
    if not isinstance(headers, dict):
        return headers
    return {
        k: mask(v) if secret_header(k) and isinstance(v, str) else v for k, v in headers.items()
    }


class _HeaderSecrets(WriteOnly):
    """Headers are replaced as a whole, but each secret value is recognised on its own."""

    def restore(self, given: Any, stored: Any) -> Any:
        if not isinstance(given, dict) or not isinstance(stored, dict):
            return given
        return {
            k: stored[k] if k in stored and secret_header(k) and v == mask(stored[k]) else v
            for k, v in given.items()
        }


URL_PASSWORD = WriteOnly(_shown_url)
HEADER_SECRETS = _HeaderSecrets(_shown_headers)


@dataclass(frozen=True)
class ArgRules:
    """How one sink type's arguments are checked, merged and shown."""

    parse: ArgsParser
    # Write-only arguments: name -> how each is shown and recognised.
    secrets: Mapping[str, WriteOnly] = field(default_factory=dict)
    # Arguments that name one thing between them: an update naming any replaces them all.
    alternatives: tuple[str, ...] = ()
    # The argument holding a URL that the egress guard must check, if any.
    egress_url: str | None = None

    def merge(self, old: dict[str, Any], new: dict[str, Any], prefix: str) -> dict[str, Any]:
        """``new`` (an update) merged into ``old``: what it leaves out is kept, a ``null``
        removes an optional argument, and a masked secret sent back unchanged (as a client
        that round-trips a GET would) keeps the stored one.

        An update that changes the URL (other than sending back the masked form it was
        shown) must state every stored credential again: kept credentials would otherwise go
        wherever the new URL points, another path of a shared host included."""
        if self.egress_url and self._moves(old, new, prefix):
            self._require_credentials(old, new, prefix)
        merged = dict(old)
        if any(new.get(k) is not None for k in self.alternatives):
            for key in self.alternatives:
                merged.pop(key, None)
        for key, value in new.items():
            rule = self.secrets.get(key)
            merged[key] = rule.restore(value, old.get(key)) if rule and key in old else value
        return {k: v for k, v in merged.items() if v is not None}

    def _moves(self, old: dict[str, Any], new: dict[str, Any], prefix: str) -> bool:
        assert self.egress_url is not None
        url, stored = new.get(self.egress_url), old.get(self.egress_url)
        if url is None or not isinstance(stored, str) or url == _shown_url(stored):
            return False
        # A bad URL is reported as such, before any talk of credentials.
        return _url(url, f"{prefix}.{self.egress_url}") != stored

    def _require_credentials(self, old: dict[str, Any], new: dict[str, Any], prefix: str) -> None:
        why = "must be given again (or null) when the URL changes"
        for key, rule in self.secrets.items():
            if key == self.egress_url or key not in old:
                continue
            if key == "headers":
                self._require_header_secrets(old[key], new, prefix, why)
            elif key not in new or not rule.resent(new[key], old[key]):
                raise InvalidArgument(f"{prefix}.{key}", why)

    @staticmethod
    def _require_header_secrets(
        stored: dict[str, str], new: dict[str, Any], prefix: str, why: str
    ) -> None:
        given = new.get("headers", stored)
        if not isinstance(given, dict):
            return  # parse() refuses it
        for name, value in stored.items():
            if not secret_header(name) or name not in given:
                continue
            # Left out with the headers, or sent back as the masked form it was shown.
            if "headers" not in new or given[name] == mask(value):
                raise InvalidArgument(f"{prefix}.headers.{name}", why)

    def shown(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """The args as ``configuration`` echoes them: write-only ones masked."""
        return {k: self.secrets[k].show(v) if k in self.secrets else v for k, v in args.items()}


def _url(value: Any, field: str) -> str:
    """A sink URL, normalised as aiohttp/yarl will read it when sending (and stored so)."""
    url = text_field(value, field, limit=2048)
    if _URL_FORBIDDEN.search(url):
        raise InvalidArgument(field, "must not contain spaces or control characters")
    try:
        parsed = URL(url)
        host = parsed.raw_host
        _ = parsed.port
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InvalidArgument(field, f"is not a valid URL ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.absolute:
        raise InvalidArgument(field, "must be an http or https URL")
    if not host:
        raise InvalidArgument(field, "must name a host")
    if REDACTED in (parsed.raw_user, parsed.raw_password) or REDACTED.replace("*", "%2A") in (
        parsed.raw_user,
        parsed.raw_password,
    ):
        # The masked form a GET shows, sent back with other changes: not a credential.
        raise InvalidArgument(field, "must not carry the masked credentials (***) shown by a GET")
    written = urlsplit(url).netloc.rpartition("@")[2]
    if not written.isascii() and is_ip_address(host):
        # Unicode digits that the client reads as an IP address: no honest URL needs them.
        raise InvalidArgument(field, "must write an IP address in ASCII digits")
    normal = str(parsed)
    if len(normal) > 2048:
        raise InvalidArgument(field, "must be at most 2048 characters once normalised")
    return normal


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


def _headers(value: Any, field: str, cfg: Config) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidArgument(field, "must be an object of header names to string values")
    most = cfg.api.max_headers_per_sink
    if len(value) > most:
        raise InvalidArgument(field, f"must have at most {most} headers (api.max_headers_per_sink)")
    out: dict[str, str] = {}
    size = 0
    for name, val in value.items():
        if not _HEADER_NAME.match(name) or len(name) > 256:
            raise InvalidArgument(f"{field}.{name}", "is not a valid header name")
        lowered = name.lower()
        if lowered in RESERVED_HEADERS:
            raise InvalidArgument(f"{field}.{name}", "is set by air-relay and cannot be replaced")
        if lowered in HOP_BY_HOP_HEADERS:
            raise InvalidArgument(f"{field}.{name}", "is a hop-by-hop or proxy header")
        if not isinstance(val, str) or not _HEADER_VALUE.match(val):
            raise InvalidArgument(
                f"{field}.{name}", "must be a single-line string of printable ASCII"
            )
        size += len(name) + len(val)
        out[name] = val
    if size > cfg.api.max_header_bytes:
        raise InvalidArgument(
            field,
            f"must hold at most {cfg.api.max_header_bytes} bytes of names and values "
            "(api.max_header_bytes)",
        )
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
        if URL(out["url"]).raw_user is not None:
            # Both would be an Authorization header; the client refuses to send either.
            raise InvalidArgument(
                f"{prefix}.bearer_token", "cannot be combined with credentials in the URL"
            )
    if args.get("headers") is not None:
        out["headers"] = _headers(args["headers"], f"{prefix}.headers", cfg)
    if args.get("template") is not None:
        # Rendered for the catalog by the template workers: registry.check_template.
        out["template"] = parse_template(args["template"], f"{prefix}.template")
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
    field = f"{prefix}.integration_key"
    key = text_field(required(args, "integration_key", prefix), field, limit=128)
    if ELLIPSIS in key:
        # The masked form a GET shows, with another tail: not a key.
        raise InvalidArgument(field, "must be the key itself, not its masked form")
    return {"integration_key": key}


WEBHOOK = ArgRules(
    parse=_webhook,
    secrets={
        "secret": masked_text(SIGNING_PREFIX),
        "bearer_token": masked_text(),
        "url": URL_PASSWORD,
        "headers": HEADER_SECRETS,
    },
    egress_url="url",
)
# channel_id and the deprecated channel name one destination: an update naming either replaces
# both, or the old one would go on deciding where messages are posted.
SLACK = ArgRules(parse=_slack, alternatives=("channel_id", "channel"))
PAGERDUTY = ArgRules(parse=_pagerduty, secrets={"integration_key": masked_text()})


def parse_events(value: Any, field: str = "events") -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidArgument(field, "must be a list of event names")
    names = [text_field(v, f"{field}[{i}]", limit=256) for i, v in enumerate(value)]
    known = catalog()
    for i, name in enumerate(names):
        if name not in known:
            # A typo would otherwise route nothing to this sink, silently.
            raise InvalidArgument(
                f"{field}[{i}]",
                f"{name!r} is not an AIR event; the events are: {', '.join(sorted(known))}",
            )
    return names


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


# Storm digests: how long a window may last, and how many events one digest lists.
DIGEST_WINDOW_SECONDS = (1, 3600)
DIGEST_MAX_LISTED = (1, 100)
DIGEST_DEFAULT_MAX_LISTED = 20


def _bounded_int(value: Any, field: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(field, f"must be an integer from {low} to {high}")
    return value


def parse_digest(value: Any, field: str = "digest") -> dict[str, int] | None:
    """``{"window_seconds": N, "max_listed": M}`` (M defaults to 20); null turns it off."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument(field, "must be an object with window_seconds and max_listed")
    reject_unknown(value, ("window_seconds", "max_listed"), field, noun="digest option")
    window = required(value, "window_seconds", field)
    return {
        "window_seconds": _bounded_int(window, f"{field}.window_seconds", DIGEST_WINDOW_SECONDS),
        "max_listed": _bounded_int(
            value.get("max_listed", DIGEST_DEFAULT_MAX_LISTED),
            f"{field}.max_listed",
            DIGEST_MAX_LISTED,
        ),
    }
