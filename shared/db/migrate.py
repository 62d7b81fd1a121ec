"""Versioned SQL migrations: ``migrations/NNNN_name.sql``, applied in order, each in its own
transaction, recorded in ``schema_migrations``, serialised across processes by an advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

from shared.db.types import Connection

log = logging.getLogger(__name__)

# pg_advisory_lock key: any constant unique to imstack ("imstack" in ASCII).
MIGRATION_LOCK_KEY = 0x696D737461636B
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The migrations shipped in ``shared/db/migrations``, in version order."""
    found = []
    for entry in resources.files("shared.db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {versions}")
    return found


def latest_version() -> int:
    migrations = load_migrations()
    return migrations[-1].version if migrations else 0


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def applied_versions(conn: Connection) -> dict[int, str]:
    """Version → checksum of the migrations recorded in this database (empty if none)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def migrate(conn: Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration (default: the shipped ones); return those applied.
    Safe to run from many processes at once."""
    applied: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        done = await applied_versions(conn)
        for migration in load_migrations() if migrations is None else migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning(
                        "migration %04d_%s changed after it was applied; not re-applied",
                        migration.version,
                        migration.name,
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied


async def is_migrated(conn: Connection) -> bool:
    """True when every shipped migration is recorded in this database."""
    done = await applied_versions(conn)
    return all(m.version in done for m in load_migrations())
