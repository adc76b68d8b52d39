"""The search index sensor: copies new requests' custom_ids into ``request_search`` (trigram-indexed)
in chunks, so the UI's custom_id search reads an index while intake never pays for one.

It works in the tick itself (no run: nothing to retry or partition, and a run's start-up would cost
more than the work). A tick stops after ``TICK_BUDGET_SECONDS``, well inside Dagster's sensor
timeout; a backlog (a first start on a full table) drains over the following ticks, and searches stay
correct meanwhile, reading the rows not yet copied by primary key.
"""

from __future__ import annotations

import time

import dagster as dg

from batch_pipeline.db import Connect
from batch_pipeline.defs.resources import PostgresParam
from batch_pipeline.store import request_search

CHUNK = 20_000
TICK_BUDGET_SECONDS = 20.0
# While a transaction older than the last chunk is still open (a bulk COPY streaming in), wait a
# little and look again; a transaction open for longer (someone's idle session) ends the tick.
_WAIT_SECONDS = 0.5
_MAX_WAITS = 10


def fill(
    connect: Connect, budget_seconds: float = TICK_BUDGET_SECONDS, chunk: int = CHUNK
) -> tuple[int, dict[str, int | bool]]:
    """Copy chunks until nothing is left or the budget is spent; returns (rows copied, progress)."""
    deadline = time.monotonic() + budget_seconds
    copied = waits = 0
    with connect() as conn:
        while True:
            step = request_search.fill_step(conn, chunk)
            copied += step.copied
            waits += step.waiting
            if step.done or waits > _MAX_WAITS or time.monotonic() >= deadline:
                break
            if step.waiting:
                time.sleep(_WAIT_SECONDS)
        return copied, request_search.progress(conn)


def make_search_index_sensor(interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="search_index_sensor",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Copies new requests' custom_ids into the trigram-indexed search table the UI's "
            "/requests search reads (intake itself never updates that index)."
        ),
    )
    def search_index_sensor(context: dg.SensorEvaluationContext, postgres: PostgresParam) -> dg.SkipReason:
        copied, where = fill(postgres.connect)
        if not where["indexed"]:
            return dg.SkipReason("no trigram index (pg_trgm missing): searches scan requests")
        behind = where["newest"] - where["searchable_up_to"]
        return dg.SkipReason(
            f"copied {copied} custom_ids; searchable up to id {where['searchable_up_to']}"
            f" ({behind} newer ids read by primary key)"
        )

    return search_index_sensor
