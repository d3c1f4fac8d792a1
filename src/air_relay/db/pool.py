"""asyncpg connections: codecs, the pool, and waiting for a database that is not up yet."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import structlog

from air_relay.redaction import redact_dsn

log = structlog.get_logger(__name__)

# What a lost, unreachable or refusing database looks like to asyncpg callers: a database that
# cannot take the request right now (so ingest answers 503 and loops retry), never a bug.
# By SQLSTATE class: 08 connection, 53 insufficient resources (disk full, out of memory, too
# many connections), 57 operator intervention (shutdown, starting up, statement timeout),
# 58 system (I/O) error, 55 object not in prerequisite state ("database is not currently
# accepting connections", lock timeouts), 40 (a deadlock or serialization failure: the
# transaction was rolled back and a retry succeeds), and 25006, a read-only standby after
# failover. Any other PostgresError is a bug or a misconfiguration: a 500 with an error-level
# log line, not a "retry later" that would hide it for ever.
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.exceptions.PostgresSystemError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.ObjectNotInPrerequisiteStateError,
    asyncpg.TransactionRollbackError,
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    # Not a PostgresError nor an InterfaceError: a pooled connection that the server ended
    # (``pg_ctl stop -m fast``) can fail the next query with "cannot switch to state 12;
    # another operation is in progress" before asyncpg notices it is closed.
    asyncpg.InternalClientError,
)


# What a transaction-mode pooler (PgBouncer's pool_mode = transaction) in front of the server
# does to asyncpg's named prepared statements: each transaction may run on another server
# connection, where the statement was never prepared (or, prepared by another client, already
# exists). Waiting will not fix it; database.prepared_statements: false will.
POOLER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidSQLStatementNameError,
    asyncpg.DuplicatePreparedStatementError,
)

POOLER_HINT = (
    "a transaction-mode pooler (PgBouncer pool_mode = transaction) between the relay and "
    "PostgreSQL loses prepared statements: set database.prepared_statements: false, and "
    "database.listen_dsn to a direct DSN for LISTEN (docs/operations.md, Behind PgBouncer)"
)


def pooler_misconfigured(exc: BaseException) -> bool:
    """True for the errors a transaction-mode pooler gives prepared statements: a
    configuration problem (``database.prepared_statements``), not an outage."""
    if isinstance(exc, POOLER_ERRORS):
        return True
    text = str(exc)
    return "prepared statement" in text and ("does not exist" in text or "already exists" in text)


def error_hint(exc: BaseException) -> dict[str, str]:
    """``{"hint": ...}`` for a log line about ``exc`` when it is a pooler misconfiguration,
    else ``{}``: callers splat it into their error-level log line."""
    return {"hint": POOLER_HINT} if pooler_misconfigured(exc) else {}


def statement_options(prepared_statements: bool) -> dict[str, Any]:
    """asyncpg connection options: with ``prepared_statements`` false, no statement cache,
    so every query goes as an unnamed statement, parsed again in the same round trip as its
    execution (asyncpg marks it so), which a transaction-mode pooler handles."""
    return {} if prepared_statements else {"statement_cache_size": 0}


def json_text(value: Any) -> str:
    """json.dumps, with a shortcut for a plain integer (ingest's organizationId, once per
    event), whose JSON is its repr."""
    if type(value) is int:
        return int.__repr__(value)
    return json.dumps(value)


async def init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json_text, decoder=json.loads, schema="pg_catalog"
        )


async def connect(dsn: str, *, prepared_statements: bool = True) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn, **statement_options(prepared_statements))
    await init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook: nothing to reset (see create_pool)."""


async def create_pool(
    dsn: str, min_size: int, max_size: int, *, prepared_statements: bool = True
) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        **statement_options(prepared_statements),
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        # Pooled connections never SET, LISTEN or take session locks (the listener and the
        # migrator use their own connections), so the default reset, a round trip of
        # RESET ALL / UNLISTEN * / CLOSE ALL on every release, buys nothing. An open
        # transaction is still rolled back by asyncpg itself.
        reset=_keep_session,
        # A statement that hangs (server gone mid-query) must not hang ingest forever.
        command_timeout=30,
    )
    return pool


# Answers that waiting will not change: wrong credentials, unknown role or database.
DB_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)


class DatabaseRefused(Exception):
    """The database answered, but will never accept this DSN as configured."""


async def wait_for_database(dsn: str, *, max_delay: float = 10.0) -> None:
    """Block until the server accepts a connection, logging while it does not.

    A server that is down or starting is waited for; one that refuses the credentials or
    has no such database raises DatabaseRefused at once (waiting would hang start-up).
    """
    delay = 0.5
    while True:
        try:
            conn: Any = await asyncio.wait_for(asyncpg.connect(dsn), timeout=10)
            await conn.close()
            return
        except DB_REFUSED as exc:
            raise DatabaseRefused(f"{type(exc).__name__}: {exc}") from exc
        except DB_UNAVAILABLE as exc:
            # The server's message names the cause; it never contains the password. A socket
            # error may not name the address (uvloop's do not): the DSN, redacted, does.
            log.warning(
                "database_unavailable",
                error=type(exc).__name__,
                detail=f"{str(exc)[:200]} (connecting to {redact_dsn(dsn)})",
                retry_in=delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
