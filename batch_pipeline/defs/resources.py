"""Resources named after the systems they wrap, all built from the one ``Settings``.

None of them takes run config: each is a plain object behind an empty config schema (ops take it as a
``ResourceParam``), so a run launched from the UI cannot point a resource at another server or change
a setting (its run config is refused), and no value (a DSN, a key) is part of the code-location
snapshot the UI shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import dagster as dg
import psycopg

from batch_pipeline import openai_client as oai
from batch_pipeline.config import ConfigError, Settings, normalize_database_url
from batch_pipeline.db import pooled
from batch_pipeline.observability import logs


class Postgres:
    """The app database: connections with dict rows from this process's pool, one short transaction
    per ``connect()`` block; the DB clock is the only clock."""

    def __init__(self, dsn: str | None) -> None:
        self._dsn = normalize_database_url(dsn) if dsn else None

    @property
    def dsn(self) -> str:
        if not self._dsn:
            raise ConfigError("DATABASE_URL is not set (start the pipeline through `batchman up`)")
        return self._dsn

    @contextmanager
    def connect(self, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        with pooled(self.dsn, autocommit=autocommit) as conn:
            yield conn


class OpenAI:
    """The OpenAI API (or the simulator) through the official SDK."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def client(self, **limits: Any):
        """An ``openai.OpenAI``; sensors pass shorter ``timeout`` and fewer ``max_retries``."""
        return oai.sync_client(self._settings, **limits)  # its calls are counted for /metrics


def _fixed(value: Any, description: str) -> dg.ResourceDefinition:
    """``value`` as a resource whose config schema is empty: run config for it is refused."""

    def resource_fn(context: dg.InitResourceContext) -> Any:
        # In a run, a generator: set up and torn down around the run. Elsewhere (sensors) the value.
        return _naming_the_run(value, context.dagster_run) if context.dagster_run else value

    return dg.ResourceDefinition(resource_fn=resource_fn, config_schema={}, description=description)


def _naming_the_run(value: Any, run: dg.DagsterRun) -> Iterator[Any]:
    """While a run holds the resource, our lines name the run and its batch (``run_id``, ``batch_id``)."""
    token = logs.set_context(run_id=run.run_id, batch_id=run.tags.get("batch_id"))
    try:
        yield value
    finally:
        with suppress(ValueError):  # torn down in another context than it was set up in
            logs.reset_context(token)


def build_resources(settings: Settings, dsn: str | None = None) -> dict[str, dg.ResourceDefinition]:
    """``dsn`` overrides ``DATABASE_URL`` (tests, and ``batchman up``'s embedded server)."""
    return {
        "postgres": _fixed(Postgres(dsn or settings.database_url), "The app database (DATABASE_URL)."),
        "openai": _fixed(OpenAI(settings), "The OpenAI API, or the simulator without OPENAI_API_KEY."),
        "settings": _fixed(settings, "The service settings, read from the environment at start."),
    }


# The annotations ops and sensors use for them.
PostgresParam = dg.ResourceParam[Postgres]
OpenAIParam = dg.ResourceParam[OpenAI]
SettingsParam = dg.ResourceParam[Settings]
