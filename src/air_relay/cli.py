"""The ``air-relay`` command line: ``serve``, ``migrate``, ``check-config``, ``status`` and
``audit verify``, their arguments, and their exit codes (0 done, 1 failed, 2 bad
configuration)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import unicodedata
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
import yaml

from air_relay import __version__
from air_relay.config import (
    Config,
    ConfigError,
    credential_warnings,
    load_config,
    redacted,
    serving_problems,
)
from air_relay.logs import configure_logging
from air_relay.model import SinkHealth

if TYPE_CHECKING:  # asyncpg is imported only by the commands that use it
    import asyncpg

EXIT_FAILURE = 1
EXIT_CONFIG = 2
DEFAULT_MIGRATE_WAIT_SECONDS = 60.0
NEW_CREDENTIAL_HINT = (
    "replace it with a random value of at least 32 characters, e.g. "
    "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="air-relay",
        description="Relay Binalyze AIR event webhooks to Webhook, Slack and PagerDuty sinks.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad configuration or arguments.",
    )
    parser.add_argument("--version", action="version", version=f"air-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the HTTP server and delivery workers"),
        ("migrate", "apply pending database migrations and exit"),
        (
            "check-config",
            "validate the config, print it with secrets redacted, warn of weak credentials",
        ),
    ):
        cmd = sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        _config_argument(cmd)
        if name == "migrate":
            _wait_argument(cmd)
    status = sub.add_parser(
        "status",
        help="print every sink's health from the database",
        description="Print every sink's health (state, since when, queue, last error) read "
        "from the database, for when the HTTP port is not reachable. Exits 0 when every "
        "active sink is healthy or idle, 1 when one is failing or the database cannot be read.",
    )
    _config_argument(status)
    _wait_argument(status)
    audit = sub.add_parser(
        "audit", help="check the sealed audit log", description="Check the sealed audit log."
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="recompute every seal of the audit log",
        description="Recompute every seal of the audit log still in the database, oldest "
        "first. Exits 0 when all match, 1 naming the first seal that does not (a row "
        "changed, deleted or inserted) or when the database cannot be read.",
    )
    _config_argument(verify)
    _wait_argument(verify)
    return parser


def _config_argument(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--config",
        default=os.environ.get("AIR_RELAY_CONFIG"),
        metavar="PATH",
        help="the YAML configuration file (default: $AIR_RELAY_CONFIG)",
    )


def _wait_argument(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_MIGRATE_WAIT_SECONDS,
        metavar="SECONDS",
        help="how long to wait for the database to accept connections "
        f"(default: {DEFAULT_MIGRATE_WAIT_SECONDS:g})",
    )


async def _connect_error(dsn: str) -> str:
    """Why a connection to ``dsn`` fails right now (the waiting loop logs only the type)."""
    import asyncpg

    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), timeout=5)
    except Exception as exc:  # any failure is the answer
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return "it accepts connections now"


class _NotReady(Exception):
    """The database did not accept a connection within the wait, or is not fully migrated."""


def _db_failures() -> tuple[type[BaseException], ...]:
    """What ends a database command (migrate, audit verify) with exit 1."""
    import asyncpg

    from air_relay.db.pool import DB_UNAVAILABLE, DatabaseRefused

    return (
        _NotReady,
        *DB_UNAVAILABLE,
        asyncpg.PostgresError,
        DatabaseRefused,  # wrong credentials, no such database
        subprocess.SubprocessError,  # the embedded server would not start
        ValueError,  # a DSN asyncpg cannot parse (bad port, bad sslmode ...)
    )


@contextlib.asynccontextmanager
async def _database(
    cfg: Config, wait_seconds: float, *, migrated: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the configured database once it accepts one (within ``wait_seconds``,
    else _NotReady), the embedded server started for it and stopped after. With ``migrated``,
    a database not fully migrated is _NotReady too (the commands that read it)."""
    from air_relay.db.migrate import current_version, latest_version
    from air_relay.db.pool import connect, wait_for_database
    from air_relay.runtime import resolve_dsn

    embedded = None
    try:
        dsn, embedded = await resolve_dsn(cfg)
        try:
            await asyncio.wait_for(wait_for_database(dsn), timeout=wait_seconds)
        except TimeoutError:
            reason = await _connect_error(dsn)
            raise _NotReady(
                f"database not reachable within {wait_seconds:g} s ({reason})"
            ) from None
        conn = await connect(dsn, prepared_statements=cfg.database.prepared_statements)
        try:
            if migrated and await current_version(conn) < latest_version():
                raise _NotReady("the database is not fully migrated")
            yield conn
        finally:
            await conn.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def _failure(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, _NotReady) else f"{type(exc).__name__}: {exc}"


async def _migrate(cfg: Config, wait_seconds: float) -> int:
    from air_relay.db.migrate import apply_migrations

    log = structlog.get_logger("air_relay.cli")
    try:
        async with _database(cfg, wait_seconds) as conn:
            applied = await apply_migrations(conn)
    except _db_failures() as exc:
        log.error("migrate_failed", error=_failure(exc))
        return EXIT_FAILURE
    log.info("migrations_done", applied=applied)
    return 0


async def _audit_verify(cfg: Config, wait_seconds: float) -> int:
    """``audit verify``: the report on stdout; 0 when every seal matches."""
    from air_relay.db import repository as repo
    from air_relay.delivery.sealing import describe, verify_chain

    log = structlog.get_logger("air_relay.cli")
    try:
        async with (
            _database(cfg, wait_seconds, migrated=True) as conn,
            repo.audit_snapshot(conn) as snapshot,
        ):
            report = await verify_chain(snapshot)
    except _db_failures() as exc:
        log.error("audit_verify_failed", error=_failure(exc))
        return EXIT_FAILURE
    print(describe(report))
    return 0 if report.ok else EXIT_FAILURE


async def _status(cfg: Config, wait_seconds: float) -> int:
    """``status``: the per-sink table on stdout; 0 when no active sink is failing."""
    from air_relay.db.health import needs_attention, sinks_health

    log = structlog.get_logger("air_relay.cli")
    try:
        async with _database(cfg, wait_seconds, migrated=True) as conn:
            rows = await sinks_health(conn, None)
            now: datetime = await conn.fetchval("SELECT now()")
    except _db_failures() as exc:
        log.error("status_failed", error=_failure(exc))
        return EXIT_FAILURE
    print(status_table(rows, now))
    return EXIT_FAILURE if needs_attention(rows) else 0


def _age(seconds: float) -> str:
    """A short age: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


# Tenant-controlled text (names, errors) must not reach the operator's terminal raw: control
# and format characters (escape sequences, newlines, bidi overrides) could forge rows.
_UNPRINTABLE = frozenset(("Cc", "Cf", "Zl", "Zp"))
# A cell longer than this is cut (ending in "..."): one sink's row stays one line.
MAX_CELL = 60
MAX_LAST_CELL = 200


def printable(text: str, limit: int = MAX_CELL) -> str:
    """``text`` with control and format characters (newline and tab among them) escaped as
    Python writes them (``\\x1b``, ``\\n``, ``\\u202e``) and cut to ``limit`` characters."""
    shown = "".join(
        ascii(ch)[1:-1] if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in text
    )
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def status_table(rows: Sequence[SinkHealth], now: datetime) -> str:
    """The sinks as a plain-text table, one line per sink, with a summary line."""
    header = ("TENANT", "SINK ID", "NAME", "TYPE", "STATE", "SINCE", "PENDING", "OLDEST",
              "DEAD", "LAST ERROR")  # fmt: skip
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        since = r.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if r.since else "-"
        oldest = _age((now - r.oldest_pending_at).total_seconds()) if r.oldest_pending_at else "-"
        error = r.last_error or "-"
        if r.last_status_code is not None and str(r.last_status_code) not in error:
            error = f"{error} ({r.last_status_code})"
        cells = (r.tenant_id, str(r.event_sink_id), r.name, r.type, r.state.upper(), since,
                 str(r.pending), oldest, str(r.dead))  # fmt: skip
        lines.append((*(printable(c) for c in cells), printable(error, MAX_LAST_CELL)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = [
        "  ".join([*(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)), line[-1]])
        for line in lines
    ]
    failing = sum(1 for r in rows if r.state == "failing")
    text.append(f"{len(rows)} sinks, {failing} failing")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.config:
        print("air-relay: --config PATH (or AIR_RELAY_CONFIG) is required", file=sys.stderr)
        return EXIT_CONFIG
    try:
        # Only serve and check-config use the ingest tokens and API keys.
        serving = args.command in ("serve", "check-config")
        cfg = load_config(args.config, serving_credentials=serving)
    except ConfigError as exc:
        print(f"air-relay: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        from air_relay.runtime import server_tls

        problems = serving_problems(cfg)
        try:
            server_tls(cfg)  # the certificate and key must load, as serve will need them
        except ConfigError as exc:
            problems.append(exc)
        if problems:
            for problem in problems:
                print(f"air-relay: invalid configuration: {problem}", file=sys.stderr)
            return EXIT_CONFIG
        print(yaml.safe_dump(redacted(cfg), sort_keys=False), end="")
        # Valid, so exit 0; on stderr, so stdout stays the YAML of the effective config.
        for warning in credential_warnings(cfg):
            print(f"air-relay: warning: {warning}: {NEW_CREDENTIAL_HINT}", file=sys.stderr)
        return 0
    configure_logging(cfg.logging.format, cfg.logging.level)
    if args.command == "migrate":
        return asyncio.run(_migrate(cfg, args.wait))
    if args.command == "audit":
        return asyncio.run(_audit_verify(cfg, args.wait))
    if args.command == "status":
        return asyncio.run(_status(cfg, args.wait))
    from air_relay.runtime import loop_factory, serve

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
