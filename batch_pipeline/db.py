"""Connections to the app database. Every SQL statement lives in ``batch_pipeline.store``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

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
