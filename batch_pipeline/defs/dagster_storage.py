"""Dagster's Postgres storage, holding its connections instead of opening one per statement.

``dagster-postgres`` builds its engines with SQLAlchemy's ``NullPool`` everywhere but the webserver:
every event a run writes, every run-queue look of the daemon and every sensor cursor read opens a new
connection, and Postgres starts a backend process for each. A 200,000-request run through
``batchman up`` opened 19,000 connections in four minutes; forking and tearing down those backends
(page tables of the shared buffers, catalog caches warmed again) took more CPU than Postgres's own
work on our rows. Here an instance's three storages share one small pool instead, and only a
process's first instance looks for Dagster's tables.

``dagster.yaml`` names this class as ``storage: custom``; its config is ``storage: postgres``'s own.
Run workers are forked from the code server's forkserver before any instance exists, so no pooled
connection is ever shared across a fork. ``pool_pre_ping`` replaces a connection that a Postgres
restart closed, so the pool is as robust as a fresh connection was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

# Per instance (one per process, but for the code server's short-lived ones per sensor tick). The
# daemon's threads (sensors, run queue, monitoring) overlap now and then; beyond the pool a
# connection is opened and closed as before.
POOL_SIZE = 2
MAX_OVERFLOW = 8
APPLICATION_NAME = "dagster"
# Hand a connection back to Postgres now and then, so a long-lived daemon never holds one for ever.
POOL_RECYCLE_SECONDS = 3600

# (pid, URL) of the databases whose Dagster tables this process has seen (or created).
_TABLES_CHECKED: set[tuple[int, str]] = set()


class PooledPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` with pooled engines (see the module docstring)."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        # Only a process's first instance looks for (and creates) Dagster's tables: the code server
        # builds an instance for each sensor tick that reads dynamic partitions, and each look was
        # three more connections, 20 a second under load.
        key = (os.getpid(), postgres_url)
        check_tables = should_autocreate_tables and key not in _TABLES_CHECKED
        super().__init__(postgres_url, check_tables, inst_data, token_provider)
        _TABLES_CHECKED.add(key)
        # One engine for the three storages: same server, same AUTOCOMMIT sessions, one pool.
        engine = create_pg_engine(
            postgres_url,
            token_provider,
            isolation_level="AUTOCOMMIT",
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
            pool_recycle=POOL_RECYCLE_SECONDS,
            pool_pre_ping=True,
            connect_args={"application_name": APPLICATION_NAME},
        )
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            # Fail loudly when an upgrade renames the engine: a silent miss would bring back one
            # connection per statement.
            old = getattr(storage, "_engine", None)
            if old is None or not hasattr(old, "dispose"):
                name = type(storage).__name__
                raise RuntimeError(f"{name}._engine is gone: review defs/dagster_storage.py")
            storage._engine = engine
            old.dispose()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
