"""Numbered ``.sql`` migrations, applied in order under an advisory lock.

Each file in ``migrations/`` named ``NNNN_description.sql`` runs once, in its own transaction,
which takes a transaction-level advisory lock first: concurrent ``serve`` starts on one
database are safe (the second waits, then finds nothing left to do), on a direct connection
and through a transaction-mode pooler alike. The bookkeeping statements are in ``queries.sql``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from air_relay.db.queries import QUERIES

log = structlog.get_logger(__name__)

# An arbitrary, fixed advisory-lock key ("air-relay" in ASCII, folded into 63 bits).
MIGRATION_LOCK_KEY = 0x6169722D72656C61

_FILE = re.compile(r"^(\d{4})_([\w-]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(
                Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
            )
    return sorted(found, key=lambda m: m.version)


def latest_version() -> int:
    return max((m.version for m in available_migrations()), default=0)


async def current_version(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> int:
    """The newest applied migration; 0 on a database never migrated."""
    if not await conn.fetchval(QUERIES["migrations_table_exists"]):
        return 0
    version: int = await conn.fetchval(QUERIES["schema_version"])
    return version


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply every pending migration; returns the versions applied by this call.

    Each transaction takes the advisory lock first and holds it to its commit, so the
    bookkeeping table is created once and each migration, checked again under the lock, is
    applied by one instance only. Nothing outlives a transaction, so this works the same
    through a transaction-mode pooler (PgBouncer) as on a direct connection.
    """
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute(QUERIES["migration_lock"], MIGRATION_LOCK_KEY)
        await conn.execute(QUERIES["create_migrations_table"])
        done = {r["version"] for r in await conn.fetch(QUERIES["applied_migrations"])}
    for migration in available_migrations():
        if migration.version in done:
            continue
        async with conn.transaction():
            await conn.execute(QUERIES["migration_lock"], MIGRATION_LOCK_KEY)
            # Another instance may have applied it since we looked.
            if await conn.fetchval(QUERIES["migration_applied"], migration.version):
                continue
            await conn.execute(migration.sql)
            await conn.execute(QUERIES["record_migration"], migration.version, migration.name)
        log.info("migration_applied", version=migration.version, name=migration.name)
        applied.append(migration.version)
    return applied
