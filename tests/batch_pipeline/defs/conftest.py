"""Pipeline fixtures: the simulator as OpenAI, our Definitions on a test database, and a driver that
runs sensors and the runs they request in process, as the daemon would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import openai
import psycopg
import pytest
from psycopg.rows import dict_row

from batch_pipeline.config import Settings
from batch_pipeline.defs.definitions import build_definitions
from batch_pipeline.simulator.app import create_app as create_simulator
from batch_pipeline.simulator.settings import SimulatorSettings
from batch_pipeline.simulator.testing import ThreadedServer
from tests.dagster_instance import dagster_test_instance


class Sim:
    def __init__(self, server: ThreadedServer) -> None:
        self.url = server.url
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0)

    def stats(self) -> dict[str, Any]:
        return self.http.get("/_sim/stats").raise_for_status().json()

    def faults(self, **values: Any) -> None:
        self.http.put("/_sim/faults", json=values).raise_for_status()

    def advance(self, seconds: float) -> None:
        self.http.post("/_sim/advance", json={"seconds": seconds}).raise_for_status()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    settings = SimulatorSettings(
        _env_file=None,
        _env_prefix="SIMULATOR_TESTS_IGNORE_",
        data_dir=tmp_path / "sim",
        freeze_clock=True,
        # Batches stay in progress until a test (or the driver) moves the simulator's clock.
        validating_seconds=1,
        in_progress_seconds=10,
        finalizing_seconds=1,
        cancelling_seconds=1,
        log_level="warning",
    )
    server = ThreadedServer(create_simulator(settings)).start()
    try:
        yield Sim(server)
    finally:
        server.stop()


@pytest.fixture
def pipeline_settings(settings_factory, db_url: str, sim: Sim) -> Settings:
    return settings_factory(
        database_url=db_url,
        openai_base_url=f"{sim.url}/v1",
        batch_max_age_seconds=0,  # every queued group is due at once
        openai_poll_interval_seconds=0,
        sensor_interval_seconds=1,
        openai_max_resubmits=1,
        # No RabbitMQ whatever the environment says: a result bound for a queue then waits for its
        # retry (the results run delivers at once), the same on every machine.
        rabbitmq_url=None,
    )


class Driver:
    """Runs the pipeline's sensors and their requested runs in process until nothing is left to do."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, db_url: str, sim: Sim) -> None:
        self.defs, self.instance, self.db_url, self.sim = defs, instance, db_url, sim
        self.runs: list[dg.ExecuteInProcessResult] = []
        # A failed run fails the test unless the test says it expects some (and then checks them).
        self.allow_failed_runs = False

    def failed_runs(self) -> list[dg.ExecuteInProcessResult]:
        return [r for r in self.runs if not r.success]

    def tick(self, sensor_name: str) -> list[dg.RunRequest]:
        sensor = self.defs.get_sensor_def(sensor_name)
        with dg.build_sensor_context(instance=self.instance, resources=self.defs.resources) as context:
            result = sensor(context)
        requests = (
            list(result.run_requests or []) if isinstance(result, dg.SensorResult) else list(result or [])
        )
        for partition_request in getattr(result, "dynamic_partitions_requests", None) or []:
            self.instance.add_dynamic_partitions(
                partition_request.partitions_def_name, partition_request.partition_keys
            )
        return requests

    def execute(self, sensor_name: str, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job_name = self.defs.get_sensor_def(sensor_name).job_name
        if request.partition_key not in self.instance.get_dynamic_partitions("batches"):
            self.instance.add_dynamic_partitions("batches", [request.partition_key])
        job = self.defs.resolve_job_def(request.job_name or job_name)
        result = job.execute_in_process(
            instance=self.instance,
            partition_key=request.partition_key,
            tags=dict(request.tags),
            raise_on_error=False,
        )
        self.runs.append(result)
        if not result.success and not self.allow_failed_runs:
            failures = [
                str(e.event_specific_data.error.message if e.event_specific_data.error else e.message)
                for e in result.all_events
                if e.is_step_failure or e.is_run_failure
            ]
            raise AssertionError(f"{job.name} run for batch {request.partition_key} failed: {failures}")
        return result

    def step(self, sensor_name: str, seen: set[str]) -> int:
        launched = 0
        for request in self.tick(sensor_name):
            if request.run_key in seen:
                continue  # the daemon launches one run per run key
            seen.add(request.run_key)
            self.execute(sensor_name, request)
            launched += 1
        return launched

    def drive(
        self,
        rounds: int = 10,
        stages: tuple[str, ...] = ("batching_sensor", "status_sensor", "delivery_sensor"),
        advance: bool = True,
    ) -> None:
        """Each round: every sensor, then its runs; OpenAI's clock moves past any batch's duration."""
        seen: set[str] = set()
        for _ in range(rounds):
            launched = sum(self.step(name, seen) for name in stages)
            if advance:
                self.sim.advance(60)
            if launched == 0 and self._idle():
                return

    def _idle(self) -> bool:
        busy = self.query(
            "SELECT count(*) AS n FROM batchman.batches WHERE state NOT IN"
            " ('ready_to_deliver', 'delivered', 'partially_delivered', 'delivery_failed', 'failed',"
            " 'cancelled', 'resubmitted', 'waiting_for_capacity')"
        )[0]["n"]
        queued = self.query("SELECT count(*) AS n FROM batchman.requests WHERE batch_id IS NULL")[0]["n"]
        return busy == 0 and queued == 0

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.db_url, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()


@pytest.fixture
def driver(pipeline_settings: Settings, db_url: str, sim: Sim) -> Iterator[Driver]:
    defs = build_definitions(pipeline_settings, dsn=db_url)
    with dagster_test_instance() as instance:
        yield Driver(defs, instance, db_url, sim)


@pytest.fixture
def add_requests(db_url: str):
    """Queue requests as intake would (rows in batchman.requests); returns their custom_ids."""

    def add(
        url: str, model: str, n: int, prefix: str = "r", faults: dict[int, str] | None = None, **extra: Any
    ):
        rows = []
        for i in range(n):
            custom_id = f"{prefix}-{i}"
            body: dict[str, Any] = {"model": model, **extra}
            if url == "/v1/chat/completions":
                body["messages"] = [{"role": "user", "content": f"question {i}"}]
            else:
                body.setdefault("input", f"question {i}")
                body.setdefault("prompt", f"question {i}")
            if faults and i in faults:
                body["x_sim_fault"] = faults[i]
            line = json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})
            rows.append((custom_id, url, model, line, len(line.encode()), 10, QUEUE_DELIVERY))
        with psycopg.connect(db_url) as conn, conn.cursor() as cur:
            cur.executemany(INSERT_REQUEST, rows)
        return [r[0] for r in rows]

    return add


QUEUE_DELIVERY = json.dumps({"type": "rabbitmq", "rabbitmq_queue": "results"})
INSERT_REQUEST = """
INSERT INTO batchman.requests
    (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens, delivery_config)
VALUES (%s, %s, %s, %s, %s, %s, %s)
"""
