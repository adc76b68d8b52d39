"""The migration runner against a real Postgres, and the migrated schema against the expected one.

After adding a migration on purpose, refresh the expected schema with
``UPDATE_EXPECTED_SCHEMA=1 pytest tests/batch_pipeline/store/test_migrate.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from batch_pipeline.store import migrate as migrate_mod
from batch_pipeline.store.migrate import Migration, MigrationError, available_migrations, migrate

EXPECTED = Path(__file__).with_name("expected_schema.txt")

COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
FROM information_schema.columns WHERE table_schema = 'batchman'
ORDER BY table_name, ordinal_position
"""
INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'batchman' ORDER BY indexname"
CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
FROM pg_constraint
WHERE connamespace = 'batchman'::regnamespace AND contype <> 'n'  -- PG 18 lists NOT NULL here too
ORDER BY 1, 2
"""


# A normalised, diff-friendly description of the batchman schema, read from the catalogs.
def describe_schema(dsn: str) -> str:
    lines: list[str] = []
    with psycopg.connect(dsn) as conn:
        for table, column, dtype, nullable, default in conn.execute(COLUMNS):
            null = "NULL" if nullable == "YES" else "NOT NULL"
            lines.append(f"column {table}.{column} {dtype} {null} {default}".rstrip())
        for name, definition in conn.execute(INDEXES):
            lines.append(f"index {name}: {definition}")
        for table, name, definition in conn.execute(CONSTRAINTS):
            lines.append(f"constraint {table}.{name}: {definition}")
    return "\n".join(lines) + "\n"


def test_migrations_are_numbered_without_gaps() -> None:
    found = available_migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "0001_init.sql"


def test_migrated_schema_is_as_expected(empty_db_url: str) -> None:
    applied = migrate(empty_db_url)
    assert applied == [m.name for m in available_migrations()]
    actual = describe_schema(empty_db_url)
    if os.environ.get("UPDATE_EXPECTED_SCHEMA"):
        EXPECTED.write_text(actual)
    expected = EXPECTED.read_text()
    with psycopg.connect(empty_db_url) as conn:
        has_trigrams = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
    if not has_trigrams:  # a server without pg_trgm (the embedded one) gets no trigram index: 0008
        expected = "".join(line for line in expected.splitlines(True) if "gin_trgm_ops" not in line)
    assert actual == expected


def test_second_run_applies_nothing_and_records_checksums(empty_db_url: str) -> None:
    migrate(empty_db_url)
    assert migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url) as conn:
        rows = conn.execute(
            "SELECT version, name, checksum FROM batchman.schema_migrations ORDER BY 1"
        ).fetchall()
    assert [(v, n, c) for v, n, c in rows] == [
        (m.version, m.name, m.checksum) for m in available_migrations()
    ]


def test_edited_migration_is_refused(empty_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    migrate(empty_db_url)
    original = available_migrations()
    edited = [
        Migration(original[0].version, original[0].name, original[0].sql + "\n-- edited"),
        *original[1:],
    ]
    monkeypatch.setattr(migrate_mod, "available_migrations", lambda: edited)
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(empty_db_url)


def test_failing_migration_leaves_nothing_half_applied(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(empty_db_url)
    broken = Migration(
        len(available_migrations()) + 1,
        "9999_broken.sql",
        "CREATE TABLE batchman.half_done (id int); SELECT no_such_function();",
    )
    monkeypatch.setattr(migrate_mod, "available_migrations", lambda: [*available_migrations(), broken])
    with pytest.raises(psycopg.errors.UndefinedFunction):
        migrate(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('batchman.half_done')").fetchone() == (None,)
        versions = [v for (v,) in conn.execute("SELECT version FROM batchman.schema_migrations")]
    assert broken.version not in versions


def test_concurrent_migrations_apply_each_file_once(empty_db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(migrate, [empty_db_url] * 4))
    assert sorted(name for applied in results for name in applied) == [m.name for m in available_migrations()]
