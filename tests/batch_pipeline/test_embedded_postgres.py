"""The embedded Postgres: starts from the wheel, keeps data across a stop and a restart."""

from __future__ import annotations

from pathlib import Path

import psycopg

from batch_pipeline.embedded_postgres import EmbeddedPostgres
from batch_pipeline.migrate import migrate


def test_data_survives_restart(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path) as pg:
        migrate(pg.url())
        with psycopg.connect(pg.url()) as conn:
            conn.execute("INSERT INTO batchman.model_limits (model_prefix, token_limit) VALUES ('m', 7)")
        url = pg.url()
    # Stopped: the socket no longer answers.
    try:
        psycopg.connect(url, connect_timeout=2).close()
        raise AssertionError("embedded Postgres still answers after stop()")
    except psycopg.OperationalError:
        pass
    with EmbeddedPostgres(tmp_path) as pg:
        assert migrate(pg.url()) == []
        with psycopg.connect(pg.url()) as conn:
            assert conn.execute("SELECT token_limit FROM batchman.model_limits").fetchone() == (7,)
            # Dagster gets its own database on the same server.
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'dagster'").fetchone() == (1,)
