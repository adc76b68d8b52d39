"""Connections to the app database. Every SQL statement lives in ``batch_pipeline.store``."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

# What stages take to open their own short transactions: ``Postgres.connect`` in runs, a plain
# ``lambda: connect(dsn)`` in tests and benchmarks.
Connect = Callable[[], AbstractContextManager[psycopg.Connection]]

# A stuck database fails a sensor tick or an op quickly instead of hanging it.
CONNECT_TIMEOUT_SECONDS = 5


@contextmanager
def connect(dsn: str, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A short-lived connection with dict rows, for sensors, ops and the CLI."""
    with psycopg.connect(
        dsn, autocommit=autocommit, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as conn:
        yield conn


# A process's pool per database: sensors tick every second and a run opens a connection per step of a
# stage, so a new connection each time meant a Postgres backend process started and ended each time
# (fork, authentication, catalog caches warmed again): thousands a minute under load.
POOL_MAX_SIZE = 10
# Connections beyond the first close after this long unused.
POOL_MAX_IDLE_SECONDS = 60
# How long a caller waits for a connection (all in use, or the server unreachable) before failing
# with ``psycopg_pool.PoolTimeout``, an ``OperationalError`` as a failed connect was.
POOL_WAIT_SECONDS = 10

# How the pipeline's connections show in pg_stat_activity (an application_name in the URL wins).
APPLICATION_NAME = "batchman-pipeline"

_pools: dict[str, ConnectionPool] = {}
_pools_lock = threading.Lock()


# DISCARD ALL but for DEALLOCATE ALL: psycopg keeps track of the statements it prepared on the
# connection (reused, they save planning) and would not know they were gone.
FRESH_SESSION = "CLOSE ALL; RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP"


def _fresh_session(conn: psycopg.Connection) -> None:
    # A connection goes back as a new one would come: no advisory lock, temp table, setting, cursor
    # or LISTEN of the last user survives.
    conn.autocommit = True
    conn.execute(FRESH_SESSION)


def _pool(dsn: str) -> ConnectionPool:
    with _pools_lock:
        pool = _pools.get(dsn)
        if pool is None:
            pool = ConnectionPool(
                dsn,
                kwargs={
                    "row_factory": dict_row,
                    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                    "application_name": conninfo_to_dict(dsn).get("application_name", APPLICATION_NAME),
                },
                min_size=1,
                max_size=POOL_MAX_SIZE,
                max_idle=POOL_MAX_IDLE_SECONDS,
                timeout=POOL_WAIT_SECONDS,
                check=ConnectionPool.check_connection,  # one that a server restart closed is replaced
                name="batchman",
                open=True,
            )
            _pools[dsn] = pool
        return pool


@contextmanager
def pooled(dsn: str, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """As ``connect``, from this process's pool: committed when the block ends, rolled back when it
    raises, and handed back as a fresh session (at once, so the next block reuses it)."""
    pool = _pool(dsn)
    conn = pool.getconn()
    try:
        conn.autocommit = autocommit
        with conn:  # psycopg's commit or rollback; the connection stays open, it is the pool's
            yield conn
    finally:
        if conn.pgconn.transaction_status == TransactionStatus.IDLE:
            with suppress(psycopg.Error):  # a broken connection: the pool discards it
                _fresh_session(conn)
        pool.putconn(conn)


def _forget_pools() -> None:
    # A forked child must not use its parent's connections (their sockets are shared) nor a lock
    # another thread held at the fork: it starts with no pool of its own. Dropping the inherited ones
    # is safe: psycopg only ever ends a connection from the process that opened it.
    global _pools, _pools_lock
    _pools, _pools_lock = {}, threading.Lock()


def close_pools() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


os.register_at_fork(after_in_child=_forget_pools)
atexit.register(close_pools)


def dagster_storage_url(dsn: str, database: str | None = None) -> str:
    """The same server for Dagster's storage, with the explicit psycopg2 scheme.

    SQLAlchemy 2.1 maps a plain ``postgresql://`` URL to psycopg 3, which breaks dagster-postgres's
    ``NOTIFY`` with bound parameters; naming psycopg2 avoids that trap.
    """
    parts = urlsplit(dsn)
    path = f"/{database}" if database else parts.path
    return urlunsplit(("postgresql+psycopg2", parts.netloc, path, parts.query, parts.fragment))


def redact(dsn: str) -> str:
    """The DSN without its password, for logs."""
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return dsn
