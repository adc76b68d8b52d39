"""A small migration runner: numbered plain-SQL files, applied in order, once, under an advisory lock.

Each file runs in its own transaction together with its ``schema_migrations`` row, so a failing file
leaves nothing half-applied. Checksums catch a file edited after it was applied.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process migrating this database.
MIGRATION_LOCK_ID = 0x0BA7C4

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

CREATE_TABLE = """
CREATE SCHEMA IF NOT EXISTS batchman;
CREATE TABLE IF NOT EXISTS batchman.schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


RECORD = "INSERT INTO batchman.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """The migration files shipped in ``batch_pipeline/store/migrations``, checked for gaps."""
    found = []
    for entry in resources.files("batch_pipeline.store.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration numbering has a gap or duplicate at {migration.name}")
    return found


def migrate(dsn: str) -> list[str]:
    """Apply every pending migration; return the names applied. Safe to call from many processes."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(CREATE_TABLE)
            done = {
                version: (name, checksum)
                for version, name, checksum in conn.execute(
                    "SELECT version, name, checksum FROM batchman.schema_migrations"
                )
            }
            for migration in available_migrations():
                if migration.version in done:
                    name, checksum = done[migration.version]
                    if checksum != migration.checksum:
                        raise MigrationError(f"{name} was edited after it was applied (checksum differs)")
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(RECORD, (migration.version, migration.name, migration.checksum))
                log.info("applied migration %s", migration.name)
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now


FIND_DATABASE = "SELECT 1 FROM pg_database WHERE datname = %s"


def ensure_database(conn: psycopg.Connection, name: str) -> None:
    """Create database ``name`` on this server unless it exists (``conn`` in autocommit mode)."""
    if conn.execute(FIND_DATABASE, (name,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# Readiness: the database answers and holds our schema (a fresh server that was never migrated fails).
SCHEMA_PRESENT = "SELECT 1 FROM batchman.schema_migrations LIMIT 1"


async def check_schema(conn: psycopg.AsyncConnection) -> None:
    """Raises when the database cannot be reached or has no migrated schema."""
    await conn.execute(SCHEMA_PRESENT)
