"""One soak run: a fresh database, two RabbitMQ queues, the sinks, ``batchman up``, the load, the wait
until every acknowledged request has reached its destination, then the figures (see ``report``)."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pika

from bench.soak import figures
from bench.soak.load import DoorResult, send_all, send_marker
from bench.soak.plan import (
    DROP_RESPONSE_NEXT,
    EXPIRE_MARKER,
    FAULTS,
    INSTANT,
    INVALID_MARKER,
    Plan,
    destination_of,
    make_request,
)
from bench.soak.sinks import Sinks, sinks
from bench.soak.stack import ProcessSampler, Stack, batchman_up
from bench.support import free_port, fresh_database, postgres_server

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
SETTLE_SECONDS = 5.0  # after the last expected delivery: time for a late second copy to show up


@dataclass
class Outcome:
    plan: Plan
    doors: list[DoorResult]
    markers: dict[str, str]  # custom_id -> marker
    started: float  # first request sent (epoch s)
    load_done: float  # every door had its answer
    first_accept: float
    last_accept: float
    all_delivered: float | None  # the moment the last expected result reached its sink
    counts: dict[str, dict[str, int]]  # sink -> custom_id -> copies received
    stored: dict[str, tuple[str, int]]  # custom_id -> (state, resubmits)
    repeats: list[tuple[str, int, int, str]]
    delivery_spans: dict[str, tuple[int, float, float]]
    batches: list[figures.Batch]
    sim_stats: dict
    sim_batches: list[dict]  # every batch the simulator holds: id, status, metadata
    db_bytes: tuple[int, int]
    peak_rss_mb: dict[str, float]
    cpu_seconds: dict[str, float]
    processes: dict[str, int]
    load_before: float  # 1-minute load average before the stack started
    load_during: list[float]  # sampled every half second while it ran

    @property
    def acknowledged(self) -> list[str]:
        return [cid for d in self.doors for cid in d.acknowledged] + list(self.markers)


@contextlib.contextmanager
def _queues(url: str) -> Iterator[tuple[str, str]]:
    names = (f"soak-in-{uuid.uuid4().hex[:8]}", f"soak-out-{uuid.uuid4().hex[:8]}")
    # A connection each time: one held idle for the whole run would miss its heartbeats.
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(url))) as conn:
        channel = conn.channel()
        for name in names:
            channel.queue_declare(name, durable=True)
    try:
        yield names
    finally:
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(url))) as conn:
            channel = conn.channel()
            for name in names:
                channel.queue_delete(name)


def _expected(plan: Plan, custom_ids: list[str]) -> dict[str, int]:
    """How many distinct custom_ids each sink must hear of."""
    want = {"webhook": 0, "queue": 0}
    for cid in custom_ids:
        want[destination_of(plan, cid)] += 1
    return want


def _wait_until_delivered(
    stack: Stack, sink: Sinks, want: dict[str, int], timeout: float, progress: bool
) -> float | None:
    """Until each sink has heard of every request meant for it; the moment the last one arrived."""
    deadline, shown = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            raise RuntimeError(f"batchman up exited:\n{stack.log.read_text()[-3000:]}")
        totals = sink.totals()
        if all(totals[s]["distinct"] >= n for s, n in want.items()):
            return max(totals[s]["last"] or 0.0 for s in want)
        if progress and time.monotonic() - shown > 15:
            shown = time.monotonic()
            got = {s: totals[s]["distinct"] for s in want}
            print(f"    … delivered so far {got} of {want}", flush=True)
        time.sleep(1.0)
    return None


def run(
    plan: Plan,
    *,
    ports: dict[str, int] | None = None,
    timeout: float = 900.0,
    extra_env: dict[str, str] | None = None,
    progress: bool = True,
    server_url: str | None = None,
) -> Outcome:
    """Runs the whole soak and returns what was measured; asserts nothing (see ``report.check``).
    ``server_url``: an admin URL of the Postgres to create the stack's database on (else as
    ``bench.support.postgres_server`` finds one)."""
    ports = ports or {name: free_port() for name in ("PORT", "DAGSTER_PORT", "SIMULATOR_PORT", "SINKS")}
    env = dict(INSTANT) | (FAULTS if plan.faults else {})
    load_before = os.getloadavg()[0]
    with (
        contextlib.nullcontext(server_url) if server_url else postgres_server() as server,
        fresh_database(server, migrated=False) as dsn,
        tempfile.TemporaryDirectory(prefix="soak-") as tmp,
        _queues(RABBITMQ_URL) as (input_queue, output_queue),
    ):
        pids: list[int] = []
        env |= {"RABBITMQ_URL": RABBITMQ_URL, "RABBITMQ_INPUT_QUEUE": input_queue} | (extra_env or {})
        stack_ports = {k: v for k, v in ports.items() if k != "SINKS"}
        with (
            sinks(ports["SINKS"], RABBITMQ_URL, output_queue, pids) as sink,
            batchman_up(Path(tmp) / "data", dsn, stack_ports, env) as stack,
            ProcessSampler([stack.process.pid, *pids]) as sampler,
        ):
            make = functools.partial(_make, plan, sink.webhook_url, output_queue)
            markers: dict[str, str] = {}
            started = time.time()
            if plan.faults:
                faults = {"drop_response_next": DROP_RESPONSE_NEXT}
                httpx.put(f"{stack.simulator}/_sim/faults", json=faults, timeout=30).raise_for_status()
                # The oldest request of the responses group: first line of its first batch, in the half
                # that runs, so usually that batch alone expires (unless the line itself draws a
                # server_error and carries its marker on; see docs/simulator.md, expire_batch).
                for i, marker in ((1, EXPIRE_MARKER), (3, INVALID_MARKER)):
                    markers[send_marker(stack.api, plan, sink.webhook_url, output_queue, i, marker)] = marker
            doors = send_all(stack.api, RABBITMQ_URL, input_queue, plan, make)
            load_done = time.time()
            want = _expected(plan, [cid for d in doors for cid in d.acknowledged] + list(markers))
            if progress:
                print(f"  load sent in {load_done - started:.1f} s; waiting for delivery", flush=True)
            all_delivered = _wait_until_delivered(stack, sink, want, timeout, progress)
            time.sleep(SETTLE_SECONDS)
            sampler.sample()
            first_accept, last_accept = figures.accept_span(dsn)
            return Outcome(
                plan=plan,
                doors=doors,
                markers=markers,
                started=started,
                load_done=load_done,
                first_accept=first_accept,
                last_accept=last_accept,
                all_delivered=all_delivered,
                counts=sink.counts(),
                stored=figures.stored_requests(dsn),
                repeats=figures.repeated_attempts(dsn),
                delivery_spans=figures.delivery_spans(dsn),
                batches=figures.batches(dsn),
                sim_stats=httpx.get(f"{stack.simulator}/_sim/stats", timeout=30).json(),
                sim_batches=_simulator_batches(stack.simulator),
                db_bytes=figures.sizes(dsn),
                peak_rss_mb=dict(sampler.peak_mb),
                cpu_seconds=sampler.cpu_seconds,
                processes={role: len(p) for role, p in sampler.processes.items()},
                load_before=load_before,
                load_during=list(sampler.load_1min),
            )


def _make(plan: Plan, webhook_url: str, queue: str, door: str, i: int) -> dict:
    return make_request(plan, door, i, webhook_url, queue)


def _simulator_batches(sim: str) -> list[dict]:
    """Every batch at the simulator, through its /v1 API (faulted like any client's calls: retried)."""
    found: list[dict] = []
    after: str | None = None
    with httpx.Client(base_url=sim, headers={"authorization": "Bearer sk-soak"}, timeout=30) as client:
        while True:
            for _ in range(50):
                try:
                    resp = client.get(
                        "/v1/batches", params={"limit": 100, **({"after": after} if after else {})}
                    )
                except httpx.TransportError:
                    continue  # a dropped connection (SIMULATOR_DROP_RATE)
                if resp.status_code == 200:
                    break
            else:
                raise RuntimeError("the simulator kept refusing GET /v1/batches")
            page = resp.json()
            found += [{k: b.get(k) for k in ("id", "status", "metadata")} for b in page["data"]]
            if not page.get("has_more"):
                return found
            after = page["data"][-1]["id"]
