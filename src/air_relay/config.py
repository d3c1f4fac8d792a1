"""Configuration: YAML with ``${VAR}`` expansion, validated into typed dataclasses.

Every key is declared once, as a dataclass field; the loader walks those declarations, so an
unknown key, a wrong type or a missing required value is reported with its dotted path
(``delivery.retry.schedule_seconds[2]``) and the CLI exits 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit

import yaml

from air_relay.redaction import REDACTED, redact_dsn

WILDCARD_TENANT = "*"


class ConfigError(Exception):
    """A configuration problem, with the dotted key it concerns."""

    def __init__(self, key: str, message: str, *, text: str | None = None) -> None:
        # ``text``: the whole sentence, when it names the key itself.
        super().__init__(text or (f"{key}: {message}" if key else message))
        self.key = key
        self.message = message


@dataclass(frozen=True)
class TlsConfig:
    # PEM files; both null (or empty) = plain HTTP. Re-read on SIGHUP.
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    # Slow clients (http/listener.py): the request headers must be complete this long after
    # the connection opened (or the next request's first byte arrived) ...
    header_timeout_seconds: float = 10.0
    # ... and a body may take body_timeout_seconds plus 1 s per body_min_bytes_per_second.
    body_timeout_seconds: float = 10.0
    body_min_bytes_per_second: int = 1024
    # An idle kept-alive connection is closed after this long.
    keepalive_timeout_seconds: float = 75.0
    # Connections over this many are closed as soon as they are accepted.
    max_connections: int = 2048
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str | None = None
    pool_min_size: int = 2
    pool_max_size: int = 10
    # How long ingest waits for a pooled connection before answering 503.
    acquire_timeout_seconds: float = 5.0
    # False behind a transaction-mode pooler (PgBouncer): asyncpg then caches no named
    # prepared statements, which such a pooler cannot keep between transactions.
    prepared_statements: bool = True
    # A direct (session) DSN for LISTEN/NOTIFY; null: the main DSN, or no LISTEN at all (the
    # dispatcher polls) when prepared_statements is false.
    listen_dsn: str | None = None


@dataclass(frozen=True)
class IngestToken:
    token: str
    tenant_id: str


@dataclass(frozen=True)
class IngestConfig:
    path: str = "/v1/air/events"
    tokens: list[IngestToken] = field(default_factory=list)


@dataclass(frozen=True)
class ApiKey:
    key: str
    tenant_ids: list[str] = field(default_factory=lambda: [WILDCARD_TENANT])

    def allows(self, tenant_id: str) -> bool:
        return WILDCARD_TENANT in self.tenant_ids or tenant_id in self.tenant_ids


@dataclass(frozen=True)
class ApiConfig:
    keys: list[ApiKey] = field(default_factory=list)
    # Caps on what an API key holder can store (each sink is read on every ingest).
    max_sinks_per_tenant: int = 100
    max_headers_per_sink: int = 32
    max_header_bytes: int = 8192
    # How long a status-page sign-in (a session cookie standing for one key) lasts.
    session_hours: float = 8.0


@dataclass(frozen=True)
class RetryConfig:
    attempts_per_claim: int = 3
    schedule_seconds: list[float] = field(
        default_factory=lambda: [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 43200]
    )
    # Bounds of the short, jittered in-process waits between attempts of one claim.
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 5.0
    # A sink's Retry-After is honoured up to this many seconds.
    retry_after_max_seconds: float = 300.0
    jitter: float = 0.2


@dataclass(frozen=True)
class DeliveryConfig:
    concurrency: int = 32
    timeout_seconds: float = 10.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    allow_private_destinations: bool = False
    batch_size: int = 32
    poll_interval_seconds: float = 1.0
    # A claim's lease; renewed every third of it while the claim runs, so a dead process's
    # deliveries are taken over this long after it died.
    lease_seconds: float = 30.0
    # Claims of one sink that may wait for a sender while other sinks' deliveries are due (all
    # its claims while it fails); 0 = a quarter of ``concurrency`` (at least 1). With nothing
    # else due, a sink may use every sender.
    sink_concurrency: int = 0
    # Of timeout_seconds, connecting (name lookup, TCP, TLS) may take at most this long: a
    # connect that runs out is told apart (timeout_connect) from an answer that never came.
    connect_timeout_seconds: float = 5.0
    # A sink host that does not resolve (no such name) for every attempt of a claim ends the
    # delivery as dead at once instead of following the retry schedule. Off by default: a
    # name may be missing only for a while (DNS being set up, a resolver outage).
    dns_not_found_is_permanent: bool = False


@dataclass(frozen=True)
class SlackIntegration:
    bot_token: str


@dataclass(frozen=True)
class SlackConfig:
    api_base_url: str = "https://slack.com/api"
    integrations: dict[str, SlackIntegration] = field(default_factory=dict)
    # Slack allows about one message per second per channel; sends are paced to that.
    min_interval_seconds: float = 1.0


@dataclass(frozen=True)
class PagerDutyConfig:
    events_url: str = "https://events.pagerduty.com/v2/enqueue"


@dataclass(frozen=True)
class RetentionConfig:
    # Finished (delivered or dead) deliveries, their attempts and their events are purged
    # this many days after they finished; pending ones never are.
    days: float = 30
    interval_seconds: float = 3600.0
    batch_size: int = 500


@dataclass(frozen=True)
class AuditConfig:
    # How often the audit log's new rows are sealed into the hash chain.
    seal_interval_seconds: float = 10.0


@dataclass(frozen=True)
class SpoolConfig:
    # While the database cannot take events, ingest keeps them under state_dir/spool/.
    enabled: bool = True
    max_bytes: int = 1_073_741_824


@dataclass(frozen=True)
class AirConfig:
    # AIR's console address: its console-relative links (``/#/...``) are made absolute with it.
    console_url: str | None = None


@dataclass(frozen=True)
class LoggingConfig:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    state_dir: str = "./var"
    ingest: IngestConfig = field(default_factory=IngestConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    slack: SlackConfig = field(default_factory=SlackConfig)
    pagerduty: PagerDutyConfig = field(default_factory=PagerDutyConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    air: AirConfig = field(default_factory=AirConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# Keys whose values are secrets: redacted by check-config, never logged. (The passwords in
# ``database.dsn`` and ``database.listen_dsn`` are redacted separately, keeping the rest of
# each DSN readable.)
SECRET_KEYS = frozenset({"token", "key", "bot_token"})

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def credential(name: str, env: typing.Mapping[str, str], key: str) -> str | None:
    """The systemd credential ``name`` (``$CREDENTIALS_DIRECTORY/name``, from LoadCredential=),
    without one trailing newline; None when there is no such credential."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name  # name matches _VAR: no "/" or ".." in it
    try:
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read the credential {path}: {exc}") from exc
    return data[:-1] if data.endswith("\n") else data


def expand_env(text: str, env: typing.Mapping[str, str], key: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is an error.

    VAR comes from the environment or, when it is unset or empty there, from the systemd
    credential of that name (``$CREDENTIALS_DIRECTORY/VAR``): secrets can be given either way.
    """

    missing: list[str] = []

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if not value:
            from_credential = credential(name, env, key)
            if from_credential is not None:
                value = from_credential
        if value is None or (value == "" and default is not None):
            if default is None:
                missing.append(name)
                return ""
            return default
        return value

    expanded = _VAR.sub(sub, text)
    if missing:
        where = (
            " (nor a credential of that name in $CREDENTIALS_DIRECTORY)"
            if env.get("CREDENTIALS_DIRECTORY")
            else ""
        )
        names = " and ".join(missing)
        verb = "is" if len(missing) == 1 else "are"
        plural = "" if len(missing) == 1 else "s"
        raise ConfigError(key, f"environment variable{plural} {names} {verb} not set{where}")
    return expanded


@dataclass
class _Expansion:
    """What ``${VAR}`` expansion did to a config tree: the values that came from variables
    (key -> the text as written, the value it became) and every variable that was missing."""

    sources: dict[str, tuple[str, str]] = field(default_factory=dict)
    errors: list[ConfigError] = field(default_factory=list)


def _expand_tree(node: Any, env: typing.Mapping[str, str], key: str, out: _Expansion) -> Any:
    if isinstance(node, str):
        try:
            value = expand_env(node, env, key)
        except ConfigError as exc:
            out.errors.append(exc)  # go on: every missing variable is reported at once
            return node
        if value != node:
            out.sources[key] = (node, value)
        return value
    if isinstance(node, dict):
        return {k: _expand_tree(v, env, _join(key, str(k)), out) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_tree(v, env, f"{key}[{i}]", out) for i, v in enumerate(node)]
    return node


def _all_at_once(errors: list[ConfigError]) -> ConfigError:
    """One error for several: the first one's key, every one's sentence on a line."""
    if len(errors) == 1:
        return errors[0]
    lines = "".join(f"\n  {e}" for e in errors)
    return ConfigError(errors[0].key, "", text=f"{len(errors)} problems:{lines}")


# Variable names that hold secrets whatever key they feed.
_SECRET_VARIABLE = re.compile(r"TOKEN|KEY|SECRET|PASS|CREDENTIAL|DSN", re.IGNORECASE)


def _is_secret(key: str, written: str) -> bool:
    last = re.sub(r"\[\d+\]$", "", key.rsplit(".", 1)[-1])
    names = [m.group(1) for m in _VAR.finditer(written)]
    return (
        last in SECRET_KEYS
        or last in ("dsn", "listen_dsn")
        or any(_SECRET_VARIABLE.search(n) for n in names)
    )


def _with_variable(exc: ConfigError, written: str, value: str) -> ConfigError:
    """``exc`` about a value that came from ``${VAR}``: the variable and (unless it is a
    secret) the value it gave, as in ``server.port: ${AIR_RELAY_PORT}='abc' is not an
    integer``."""
    shown = " (value not shown)" if _is_secret(exc.key, written) else f"={value!r}"
    message = exc.message
    wrong_type = re.fullmatch(r"must be (.+), got \w+", message)
    if wrong_type:
        message = f"is not {wrong_type.group(1)}"
    return ConfigError(exc.key, f"{written}{shown} {message}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


_BOOL_TEXT = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _coerce(value: Any, tp: Any, key: str) -> Any:  # noqa: C901 - one branch per kind of type
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"must be {_type_name(tp)}, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, _join(key, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[value.strip().lower()]  # a boolean from ${VAR} arrives as text
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)  # a number from ${VAR} expansion arrives as text
    elif tp is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(key, "must be a finite number")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(key, f"must be {_type_name(tp)}, got {type(value).__name__}")


def _build(cls: type[Any], data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix or "(top level)", f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in known:
            raise ConfigError(_join(prefix, str(name)), "unknown key")
    kwargs: dict[str, Any] = {}
    for name, fld in known.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "is required")
    return cls(**kwargs)


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, "must be greater than 0")


def _not_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(key, "must not be negative")


def _http_url(key: str, value: str) -> None:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ConfigError(key, "must be an http:// or https:// URL")


def _console_url(key: str, value: str) -> None:
    """An http(s) URL with a host, and nothing a link could be appended to badly."""
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(key, "is not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, "must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or re.search(r"[\s\x00-\x1f\x7f]", value):
        raise ConfigError(key, "must not have a query, a fragment, spaces or control characters")


def _check_credentials(cfg: Config) -> None:
    tokens: dict[str, int] = {}
    for i, tok in enumerate(cfg.ingest.tokens):
        if not tok.token:
            raise ConfigError(f"ingest.tokens[{i}].token", "must not be empty")
        if not tok.tenant_id:
            raise ConfigError(f"ingest.tokens[{i}].tenant_id", "must not be empty")
        if tok.token in tokens:
            # Two tenants behind one token would make the tenant of an event a guess.
            raise ConfigError(
                f"ingest.tokens[{i}].token", f"repeats ingest.tokens[{tokens[tok.token]}].token"
            )
        tokens[tok.token] = i
    keys: dict[str, int] = {}
    for i, api_key in enumerate(cfg.api.keys):
        if not api_key.key:
            raise ConfigError(f"api.keys[{i}].key", "must not be empty")
        if api_key.key in keys:
            raise ConfigError(f"api.keys[{i}].key", f"repeats api.keys[{keys[api_key.key]}].key")
        keys[api_key.key] = i
        if not api_key.tenant_ids:
            raise ConfigError(f"api.keys[{i}].tenant_ids", 'must name at least one tenant, or "*"')
        for j, tenant in enumerate(api_key.tenant_ids):
            if not tenant:
                raise ConfigError(f"api.keys[{i}].tenant_ids[{j}]", "must not be empty")
    for name, integ in cfg.slack.integrations.items():
        if not integ.bot_token:
            raise ConfigError(f"slack.integrations.{name}.bot_token", "must not be empty")


def _check_delivery(d: DeliveryConfig) -> None:
    _positive("delivery.concurrency", d.concurrency)
    _positive("delivery.timeout_seconds", d.timeout_seconds)
    _positive("delivery.connect_timeout_seconds", d.connect_timeout_seconds)
    _positive("delivery.batch_size", d.batch_size)
    _positive("delivery.poll_interval_seconds", d.poll_interval_seconds)
    _positive("delivery.lease_seconds", d.lease_seconds)
    _not_negative("delivery.sink_concurrency", d.sink_concurrency)
    r = d.retry
    _positive("delivery.retry.attempts_per_claim", r.attempts_per_claim)
    for i, sec in enumerate(r.schedule_seconds):
        _not_negative(f"delivery.retry.schedule_seconds[{i}]", sec)
    _not_negative("delivery.retry.backoff_initial_seconds", r.backoff_initial_seconds)
    _not_negative("delivery.retry.backoff_max_seconds", r.backoff_max_seconds)
    if r.backoff_initial_seconds > r.backoff_max_seconds:
        raise ConfigError(
            "delivery.retry.backoff_initial_seconds",
            "must not exceed delivery.retry.backoff_max_seconds",
        )
    _not_negative("delivery.retry.retry_after_max_seconds", r.retry_after_max_seconds)
    if not 0 <= r.jitter < 1:
        raise ConfigError("delivery.retry.jitter", "must be at least 0 and less than 1")


def _check_server(server: ServerConfig) -> None:
    if not 0 < server.port < 65536:
        raise ConfigError("server.port", "must be between 1 and 65535")
    if not server.host:
        raise ConfigError("server.host", "must not be empty")
    if not _is_address(server.host):
        raise ConfigError(
            "server.host",
            f"{server.host!r} is not an address to listen on: an IP address (0.0.0.0, ::, "
            "127.0.0.1 ...) or a host name, without a scheme or a port",
        )
    _positive("server.max_body_bytes", server.max_body_bytes)
    _positive("server.header_timeout_seconds", server.header_timeout_seconds)
    _positive("server.body_timeout_seconds", server.body_timeout_seconds)
    _positive("server.body_min_bytes_per_second", server.body_min_bytes_per_second)
    _positive("server.keepalive_timeout_seconds", server.keepalive_timeout_seconds)
    _positive("server.max_connections", server.max_connections)
    tls = server.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        missing = "server.tls.key_file" if tls.cert_file else "server.tls.cert_file"
        raise ConfigError(missing, "must be set with the other (both, or neither for plain HTTP)")


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_address(host: str) -> bool:
    """An IP address, or a host name that could resolve to one (all-digit labels are neither:
    ``999.1.1.1`` is a mistyped address)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    labels = host.removesuffix(".").split(".")
    return (
        len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not all(label.isdigit() for label in labels)
    )


def _check_dsn(key: str, dsn: str | None, empty: str) -> None:
    if not dsn:
        return
    if not re.match(r"^postgres(ql)?://", dsn):
        # asyncpg takes URIs only, not libpq's "host=... dbname=..." form.
        raise ConfigError(key, f"must be a postgresql:// URI {empty}")
    try:
        _ = urlsplit(dsn).port
    except ValueError as exc:
        raise ConfigError(key, "has an invalid port") from exc


def _check_values(cfg: Config) -> None:
    _check_server(cfg.server)
    _positive("api.max_sinks_per_tenant", cfg.api.max_sinks_per_tenant)
    _not_negative("api.max_headers_per_sink", cfg.api.max_headers_per_sink)
    _not_negative("api.max_header_bytes", cfg.api.max_header_bytes)
    _positive("api.session_hours", cfg.api.session_hours)
    db = cfg.database
    _not_negative("database.pool_min_size", db.pool_min_size)
    _positive("database.pool_max_size", db.pool_max_size)
    if db.pool_min_size > db.pool_max_size:
        raise ConfigError("database.pool_min_size", "must not exceed database.pool_max_size")
    _positive("database.acquire_timeout_seconds", db.acquire_timeout_seconds)
    _check_dsn("database.dsn", db.dsn, "(or empty for embedded)")
    _check_dsn("database.listen_dsn", db.listen_dsn, "(or empty for database.dsn)")
    if db.listen_dsn and not db.dsn:
        raise ConfigError("database.listen_dsn", "needs database.dsn (the embedded server has one)")
    if not db.dsn and not cfg.state_dir:
        raise ConfigError("state_dir", "must not be empty when database.dsn is not set")
    if not cfg.ingest.path.startswith("/"):
        raise ConfigError("ingest.path", "must start with /")
    _check_credentials(cfg)
    _check_delivery(cfg.delivery)
    _http_url("slack.api_base_url", cfg.slack.api_base_url)
    _http_url("pagerduty.events_url", cfg.pagerduty.events_url)
    _not_negative("slack.min_interval_seconds", cfg.slack.min_interval_seconds)
    _positive("retention.days", cfg.retention.days)
    _positive("retention.interval_seconds", cfg.retention.interval_seconds)
    _positive("retention.batch_size", cfg.retention.batch_size)
    _positive("audit.seal_interval_seconds", cfg.audit.seal_interval_seconds)
    _positive("spool.max_bytes", cfg.spool.max_bytes)
    if cfg.air.console_url:
        _console_url("air.console_url", cfg.air.console_url)
    if cfg.logging.format not in ("json", "console"):
        raise ConfigError("logging.format", "must be json or console")
    if cfg.logging.level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError("logging.level", "must be debug, info, warning, error or critical")


# The values the documentation hands out for trying air-relay (README.md's Quickstart) and the
# placeholders of systemd/air-relay.env.example: public, so a relay still using one is open.
EXAMPLE_CREDENTIALS = frozenset(
    {
        "dev-ingest-token",
        "dev-api-key",
        "replace-with-a-long-random-ingest-token",
        "replace-with-a-long-random-api-key",
    }
)
_PLACEHOLDER = re.compile(r"replace[-_ ]?with|change[-_ ]?me|placeholder", re.IGNORECASE)
# 32 characters of secrets.token_urlsafe are about 190 bits; shorter ones are likely typed by
# hand.
MIN_CREDENTIAL_LENGTH = 32


def credential_warnings(cfg: Config) -> list[str]:
    """Why an ingest token or API key looks weak, one message per credential, naming its key.

    A valid configuration, so nothing refuses to start: check-config prints these, serve logs
    them. The value itself is never part of a message.
    """
    found = [(f"ingest.tokens[{i}].token", t.token) for i, t in enumerate(cfg.ingest.tokens)]
    found += [(f"api.keys[{i}].key", k.key) for i, k in enumerate(cfg.api.keys)]
    warnings = []
    for key, value in found:
        if value in EXAMPLE_CREDENTIALS or _PLACEHOLDER.search(value):
            warnings.append(f"{key} still holds an example placeholder from the documentation")
        elif len(value) < MIN_CREDENTIAL_LENGTH:
            warnings.append(
                f"{key} is shorter than {MIN_CREDENTIAL_LENGTH} characters ({len(value)})"
            )
    return warnings


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(str(key), f"is given twice in one mapping (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> None:
    """Refuse a key given twice in one mapping, naming its full dotted path and both lines
    (YAML itself would keep the last one, silently)."""
    if id(node) in seen:  # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if name is None or name == "<<":
                continue
            dotted = _join(path, str(name))
            line = key_node.start_mark.line + 1
            if name in lines:
                raise ConfigError(
                    dotted,
                    "is given twice",
                    text=f"duplicate key {dotted} at line {line} (given twice: first at line "
                    f"{lines[name]}; YAML would keep only the last)",
                )
            lines[name] = line
            _duplicate_keys(value_node, dotted, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, f"{path}[{i}]", seen)


# Where the credentials that only a serving relay uses live: the ingest tokens, the API keys.
_SERVING_CREDENTIALS = re.compile(r"^(ingest\.tokens|api\.keys)\[\d+\]\.")


def parse_config(
    text: str,
    env: typing.Mapping[str, str] | None = None,
    *,
    serving_credentials: bool = True,
) -> Config:
    """YAML text to a validated Config; ``env`` (default: ``os.environ``) feeds ``${VAR}``.

    Every missing variable is reported at once; an error about a value that came from a
    variable names the variable (and its value, unless it is a secret). Without
    ``serving_credentials`` (the commands that only read the database: ``migrate``,
    ``status``, ``audit verify``), an unset variable of an ingest token or an API key is no
    error: a monitoring check should not need the secrets AIR and the API clients use."""
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
        if tree is not None:
            _duplicate_keys(tree, "", set())
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError("", f"not valid YAML: {_yaml_problem(exc)}") from exc
    expansion = _Expansion()
    expanded = _expand_tree(raw, os.environ if env is None else env, "", expansion)
    errors = [
        e for e in expansion.errors if serving_credentials or not _SERVING_CREDENTIALS.match(e.key)
    ]
    if errors:
        raise _all_at_once(errors)
    try:
        cfg: Config = _build(Config, expanded, "")
        _check_values(cfg)
    except ConfigError as exc:
        if exc.key in expansion.sources:
            raise _with_variable(exc, *expansion.sources[exc.key]) from exc
        raise
    return cfg


def serving_problems(cfg: Config) -> list[ConfigError]:
    """Why a valid configuration could still not serve anyone: no ingest token (every event
    from AIR would be refused) or no API key (no sink could be created)."""
    problems = []
    if cfg == Config():
        problems.append(
            ConfigError(
                "",
                "",
                text="the configuration is empty: it has no ingest tokens and "
                "no API keys (see config.example.yaml)",
            )
        )
        return problems
    if not cfg.ingest.tokens:
        problems.append(
            ConfigError("ingest.tokens", "is empty: AIR could not deliver a single event")
        )
    if not cfg.api.keys:
        problems.append(ConfigError("api.keys", "is empty: no event sink could be created"))
    return problems


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without the quoted line PyYAML's own message adds: that line
    may hold an ingest token, an API key or a DSN password (``token: s3cr3t: x``)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    parts = []
    for what, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if what and mark is not None:
            parts.append(f"{what} (line {mark.line + 1}, column {mark.column + 1})")
        elif what:
            parts.append(what)
    return "; ".join(parts) or type(exc).__name__


def load_config(
    path: str | Path,
    env: typing.Mapping[str, str] | None = None,
    *,
    serving_credentials: bool = True,
) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"config file {path} is not UTF-8 text") from exc
    return parse_config(text, env, serving_credentials=serving_credentials)


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret replaced by ``***``."""

    def walk(node: Any, name: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, name) for v in node]
        if name in SECRET_KEYS and node:
            return REDACTED
        if name in ("dsn", "listen_dsn") and isinstance(node, str):
            return redact_dsn(node)
        return node

    result: dict[str, Any] = walk(dataclasses.asdict(cfg), "")
    return result
