"""Test databases that are emptied between tests instead of created and dropped.

``CREATE DATABASE … TEMPLATE`` and ``DROP DATABASE`` cost 0.3-0.9 s per test on our 2-core machines
(each copies or removes the whole catalog and waits for the disk); over the 330 tests that take a
database that was a fifth of ``make test``. Emptying a used database costs ~50 ms: end the test's
connections, TRUNCATE our tables, put back the rows the migrations seeded, reset the sequences.

A database comes back only when its schema is the template's exactly (relations, columns, functions,
extensions, database settings): a test that created a table, altered a column or stored Dagster's
tables in it leaves a database that is dropped instead, so no test ever sees another's leftovers.
Tests that read query plans take ``fresh_db_url``: planner statistics outlive a TRUNCATE.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

# What a test may not change and still hand its database back: every relation, column, function,
# extension and database-level setting outside the system schemas.
FINGERPRINT = """
SELECT md5(string_agg(item, ',' ORDER BY item)) FROM (
    SELECT format('%s.%s:%s', n.nspname, c.relname, c.relkind) AS item
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
       AND n.nspname NOT LIKE 'pg\\_temp%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp%'
    UNION ALL
    SELECT format('%s.%s.%s:%s:%s', n.nspname, c.relname, a.attname, a.atttypid, a.attnotnull)
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE a.attnum > 0 AND NOT a.attisdropped AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\\_t%'
    UNION ALL
    SELECT format('fn %s.%s', n.nspname, p.proname)
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT 'ext ' || extname FROM pg_extension
    UNION ALL
    SELECT 'set ' || array_to_string(setconfig, ';') FROM pg_db_role_setting
     WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
) items
"""
# Our tables but the migrations' own record, which a test never changes.
OUR_TABLES = """
SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
 WHERE schemaname = 'batchman' AND tablename <> 'schema_migrations' ORDER BY 1
"""
SEQUENCES = """
SELECT format('%I.%I', schemaname, sequencename), coalesce(last_value, start_value), last_value IS NOT NULL
  FROM pg_sequences WHERE schemaname = 'batchman'
"""
OTHER_BACKENDS = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def ended_sessions(url: str) -> int:
    """Backends that have ended on the database of ``url``: Postgres counts a session when it ends,
    so this counts connections opened and closed (one per statement is what pooling prevents)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        query = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        return conn.execute(query).fetchone()[0]


class DatabasePool:
    """Databases cloned from ``template`` on the server of ``admin_url``, reused test after test."""

    def __init__(self, admin_url: str, template: str) -> None:
        self.admin_url, self.template = admin_url, template
        self._free: list[str] = []
        self._made: set[str] = set()
        with psycopg.connect(with_database(admin_url, template)) as conn:
            self._fingerprint = conn.execute(FINGERPRINT).fetchone()[0]
            self._tables = [t for (t,) in conn.execute(OUR_TABLES)]
            self._sequences = conn.execute(SEQUENCES).fetchall()
            # The rows the migrations put in (the intake switch, the search watermark…).
            self._seeds: dict[str, bytes] = {}
            for table in self._tables:
                copy = sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(sql.SQL(table))
                with conn.cursor().copy(copy) as cp:
                    data = b"".join(bytes(chunk) for chunk in cp)
                if conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.SQL(table))).fetchone()[
                    0
                ]:
                    self._seeds[table] = data

    def take(self) -> str:
        """A database just like the template, and no one else's."""
        if self._free:
            return with_database(self.admin_url, self._free.pop())
        return with_database(self.admin_url, self.create())

    def create(self) -> str:
        name = f"batchman_t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self._made.add(name)
        return name

    def give_back(self, url: str) -> None:
        """Empty the database for the next test, or drop it when the test changed its schema."""
        name = urlsplit(url).path.lstrip("/")
        try:
            if self._reset(url):
                self._free.append(name)
                return
        except psycopg.Error:
            pass  # whatever state it is in, it goes
        self.drop(name)

    def _reset(self, url: str) -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(OTHER_BACKENDS)
            if conn.execute(FINGERPRINT).fetchone()[0] != self._fingerprint:
                return False
            with conn.transaction():
                tables = sql.SQL(", ").join(sql.SQL(t) for t in self._tables)
                conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(tables))
                for table, data in self._seeds.items():
                    copy = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(sql.SQL(table))
                    with conn.cursor().copy(copy) as cp:
                        cp.write(data)
                for sequence, value, called in self._sequences:
                    conn.execute("SELECT setval(%s::regclass, %s, %s)", (sequence, value, called))
        return True

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._made.discard(name)

    def close(self) -> None:
        for name in list(self._made):
            self.drop(name)
        self._free.clear()
