"""The database's figures for ``/metrics``, read at scrape time and kept a few seconds.

The Dagster runs (upload, status, results, delivery) record what they do in the database: batch state
changes in ``batch_transitions``, delivery attempts with their latency in ``delivery_attempts``, token
usage and line counts on ``batches``, and every process its OpenAI calls in ``openai_calls``. Reading
those at scrape time means no exporter per run process, and every API worker answers the same figures.
Counters over the append-only tables are kept as running totals in this process and advanced one id
range per refresh (``store.metrics``): a scrape reads the newest rows by primary key, not the table.
The first counted range of a process reads everything once (about 0.x s with a million attempts; see
the README).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from batch_pipeline.admin import intake_control
from batch_pipeline.config import Settings
from batch_pipeline.openai_call_figures import CALL_BUCKETS_SECONDS
from batch_pipeline.pricing import PriceTable, PriceTableError, cost, load_prices
from batch_pipeline.store import metrics as sql
from batch_pipeline.store import openai_calls
from batch_pipeline.store.openai_calls import record_openai_calls

__all__ = ["DatabaseMetrics", "metric_prices", "record_openai_calls"]

# How long one reading is served: a scrape every few seconds from several Prometheus replicas, or a
# dashboard, costs the database one round of statements per interval.
CACHE_SECONDS = 5.0
# Ids handed out this recently may belong to transactions still open: counted on a later refresh.
SETTLE_SECONDS = 15.0
TOKEN_KINDS = ("input", "cached", "output", "reasoning")
log = logging.getLogger(__name__)


@dataclass
class Tally:
    """Running totals of the append-only tables, advanced one id range per refresh.

    A range ends at the newest ids seen at least ``SETTLE_SECONDS`` ago: an id is handed out when its
    row is inserted, but a transaction still open then could commit it after a higher id was counted.
    The pipeline's inserts commit within moments, so after that wait every id up to there is final
    (committed, or rolled back for good) and none is missed or counted twice.
    """

    deliveries_upto: int = 0
    transitions_upto: int = 0
    calls_upto: int = 0
    marks: deque = field(default_factory=deque)  # (monotonic time, delivery, transition, call ids)
    deliveries: Counter = field(default_factory=Counter)  # (type, outcome) -> n
    delivery_ms: Counter = field(default_factory=Counter)  # type -> total ms
    buckets: Counter = field(default_factory=Counter)  # (type, bucket) -> n
    transitions: Counter = field(default_factory=Counter)  # (from, to) -> n
    calls: Counter = field(default_factory=Counter)  # (operation, outcome) -> n
    call_seconds: Counter = field(default_factory=Counter)  # (operation, outcome) -> total s
    call_buckets: Counter = field(default_factory=Counter)  # (operation, outcome, bucket) -> n

    async def advance(self, conn: psycopg.AsyncConnection) -> None:
        now = time.monotonic()
        self.marks.append((now, *await sql.max_ids(conn)))
        settled = None
        while self.marks and self.marks[0][0] <= now - SETTLE_SECONDS:
            settled = self.marks.popleft()
        if settled is None:
            return
        self.marks.appendleft(settled)  # also the start of the next wait
        _, deliveries_upto, transitions_upto, calls_upto = settled
        if deliveries_upto > self.deliveries_upto:
            for row in await sql.deliveries_between(conn, self.deliveries_upto, deliveries_upto):
                self.deliveries[row["type"], row["outcome"]] += row["n"]
                self.delivery_ms[row["type"]] += row["ms"]
                self.buckets[row["type"], row["bucket"]] += row["n"]
            self.deliveries_upto = deliveries_upto
        if transitions_upto > self.transitions_upto:
            for row in await sql.transitions_between(conn, self.transitions_upto, transitions_upto):
                self.transitions[row["from_state"], row["to_state"]] += row["n"]
            self.transitions_upto = transitions_upto
        if calls_upto > self.calls_upto:
            for row in await openai_calls.calls_between(conn, self.calls_upto, calls_upto):
                key = (row["operation"], row["outcome"])
                self.calls[key] += row["calls"]
                self.call_seconds[key] += row["seconds"]
                for i, n in enumerate(row["buckets"]):
                    self.call_buckets[(*key, i)] += n or 0
            self.calls_upto = calls_upto


@dataclass
class Reading:
    queue: list[dict[str, Any]]
    batch_states: dict[str, int]
    backlog: dict[str, int]
    totals: list[dict[str, Any]]
    paused: bool


class DatabaseMetrics:
    """One per API process: ``render(conn_factory)`` gives the exposition text of the database figures."""

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.tally = Tally()
        self.prices = prices  # None: no cost is exported
        self._lock = asyncio.Lock()
        self._text = b""
        self._at = float("-inf")

    async def render(self, conn: psycopg.AsyncConnection) -> bytes:
        async with self._lock:  # concurrent scrapes share one refresh
            if time.monotonic() - self._at >= CACHE_SECONDS:
                reading = await self._read(conn)
                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Families(self, reading))
                self._text = generate_latest(registry)
                self._at = time.monotonic()
            return self._text

    async def _read(self, conn: psycopg.AsyncConnection) -> Reading:
        await self.tally.advance(conn)
        return Reading(
            queue=await sql.queue(conn),
            batch_states=await sql.batch_states(conn),
            backlog=await sql.delivery_backlog(conn),
            totals=await sql.batch_totals(conn),
            paused=await _paused(conn),
        )


def metric_prices(settings: Settings) -> PriceTable | None:
    """The price table for the cost metric; an unusable MODEL_PRICES_FILE leaves the cost out (and says
    so) rather than failing every scrape."""
    try:
        return load_prices(settings.model_prices_file)
    except PriceTableError as exc:
        log.warning("metrics: no cost exported: %s", exc)
        return None


async def _paused(conn: psycopg.AsyncConnection) -> bool:
    return bool(await intake_control.is_paused(conn))


class _Families:
    """A prometheus-client collector over one reading (registered in a throw-away registry)."""

    def __init__(self, owner: DatabaseMetrics, reading: Reading) -> None:
        self.owner, self.reading = owner, reading

    def collect(self) -> Iterator[Any]:
        r, t = self.reading, self.owner.tally
        depth = GaugeMetricFamily(
            "batchman_queue_depth", "Requests waiting for a batch", labels=["endpoint", "model"]
        )
        age = GaugeMetricFamily(
            "batchman_queue_oldest_age_seconds",
            "Age of the oldest request waiting for a batch",
            labels=["endpoint", "model"],
        )
        for row in r.queue:
            depth.add_metric([row["endpoint"], row["model"]], row["depth"])
            age.add_metric([row["endpoint"], row["model"]], max(row["oldest_age_seconds"], 0.0))
        yield depth
        yield age
        batches = GaugeMetricFamily("batchman_batches", "Batches per state", labels=["state"])
        for state, n in sorted(r.batch_states.items()):
            batches.add_metric([state], n)
        yield batches
        backlog = GaugeMetricFamily(
            "batchman_delivery_backlog",
            "Results not yet delivered: waiting (openai_processed) or claimed by a run (delivering)",
            labels=["state"],
        )
        for state, n in sorted(r.backlog.items()):
            backlog.add_metric([state], n)
        yield backlog
        yield from self._totals()
        yield from _deliveries(t)
        yield _openai_calls(t)
        moves = CounterMetricFamily(
            "batchman_batch_transitions",
            "Batch state changes (OpenAI upload, create, completion, download, delivery outcomes)",
            labels=["from_state", "to_state"],
        )
        for (src, dst), n in sorted(t.transitions.items()):
            moves.add_metric([src, dst], n)
        yield moves
        yield GaugeMetricFamily("batchman_intake_paused", "1 while intake is paused", value=int(r.paused))

    def _totals(self) -> Iterator[Any]:
        tokens = CounterMetricFamily(
            "batchman_openai_tokens", "Tokens OpenAI reported for our batches", labels=["model", "kind"]
        )
        lines = CounterMetricFamily(
            "batchman_result_lines_stored",
            "Output and error lines of batches whose results were stored",
            labels=["model"],
        )
        usd = CounterMetricFamily(
            "batchman_openai_cost_usd",
            "What the reported tokens cost at batch rates (pricing.py); unpriced models are left out",
            labels=["model"],
        )
        prices = self.owner.prices
        for row in self.reading.totals:
            for kind in TOKEN_KINDS:
                tokens.add_metric([row["model"], kind], row[f"{kind}_tokens"])
            lines.add_metric([row["model"]], row["result_lines"])
            rates = prices.for_model(row["model"]) if prices else None
            if rates is not None:
                batch_usd = cost(
                    rates, row["input_tokens"], row["cached_tokens"], row["output_tokens"]
                ).batch_usd
                usd.add_metric([row["model"]], batch_usd)
        yield tokens
        yield lines
        if prices is not None:
            yield usd


def _deliveries(t: Tally) -> Iterator[Any]:
    done = CounterMetricFamily(
        "batchman_deliveries", "Delivery attempts by type and outcome", labels=["type", "outcome"]
    )
    for (kind, outcome), n in sorted(t.deliveries.items()):
        done.add_metric([kind, outcome], n)
    yield done
    latency = HistogramMetricFamily(
        "batchman_delivery_duration_seconds", "Delivery attempt latency", labels=["type"]
    )
    for kind in sorted(t.delivery_ms):
        cumulative, buckets = 0, []
        for i, bound in enumerate((*sql.LATENCY_BUCKETS_MS, None)):
            cumulative += t.buckets[kind, i]
            buckets.append(("+Inf" if bound is None else str(bound / 1000), cumulative))
        latency.add_metric([kind], buckets, sum_value=t.delivery_ms[kind] / 1000)
    yield latency


def _openai_calls(t: Tally) -> Any:
    latency = HistogramMetricFamily(
        "batchman_openai_call_seconds",
        "OpenAI HTTP calls (SDK retries included) of every process, by operation and outcome, and their"
        " latency to the answer's headers",
        labels=["operation", "outcome"],
    )
    for key in sorted(t.calls):
        cumulative, buckets = 0, []
        for i, bound in enumerate((*CALL_BUCKETS_SECONDS, None)):
            cumulative += t.call_buckets[(*key, i)]
            buckets.append(("+Inf" if bound is None else str(bound), cumulative))
        latency.add_metric(list(key), buckets, sum_value=t.call_seconds[key])
    return latency
