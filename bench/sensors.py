"""The orchestration at scale: every sensor's tick with 1,000 batches in flight, and Dagster UI loads.

Sets up, on a fresh database and the simulator (its own process): ``BATCHES`` (default 1,000) batches
created at the simulator and in flight (``openai_processing``, 10 requests each, all due for a poll),
``QUEUED`` (default 50,000) requests waiting to be batched in 5 groups, and one Dagster partition per
batch on a Postgres-backed instance (the repo's dagster.yaml). Then each sensor of the code location
is evaluated ``TICKS`` times through Dagster's API (as the daemon would, cursor kept, dynamic
partition requests applied): while every batch is in progress, and again after the simulator's clock
has moved past them all (the status sensor then records completions and requests results runs).
Target: every tick < 5 s. Then a ``dagster-webserver`` (``--path-prefix /dagster``, as ``batchman
up`` runs it) on the same instance: the UI's HTML and the GraphQL queries behind the asset catalog
(partition counts over 1,000 partitions), a job's partition status and the run list, each the
median of 3. ``python -m bench sensors``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg

from batch_pipeline.config import Settings
from batch_pipeline.db import dagster_storage_url
from batch_pipeline.runtime import dagster_processes as dp
from bench.support import free_port, fresh_database, postgres_server, report

ROOT = Path(__file__).resolve().parents[1]
BATCHES = int(os.environ.get("BATCHES", "1000"))
PER_BATCH = 10
QUEUED = int(os.environ.get("QUEUED", "50000"))
TICKS = int(os.environ.get("TICKS", "5"))
TARGET_SECONDS = 5.0
MODEL = "gpt-4o-mini"
ENDPOINT = "/v1/chat/completions"

_INSERT_BATCH = """
INSERT INTO batchman.batches (endpoint, model, state, request_count, size_bytes, estimated_tokens,
                              openai_input_file_id, openai_batch_id, openai_status, next_check_at)
VALUES (%s, %s, 'openai_processing', %s, %s, %s, %s, %s, 'in_progress', now())
RETURNING id
"""
_COPY_REQUESTS = (
    "COPY batchman.requests (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens,"
    " delivery_config, batch_id, state) FROM STDIN"
)
_DELIVERY = json.dumps({"type": "webhook", "webhook_url": "http://127.0.0.1:9/unused"})


def _line(custom_id: str, model: str = MODEL) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body})


def populate(db_url: str, client) -> None:
    """One input file shared by every batch (the simulator answers each from it), BATCHES batches."""
    started = time.monotonic()
    ids = [f"line-{i}" for i in range(PER_BATCH)]
    content = "\n".join(_line(c) for c in ids).encode() + b"\n"
    file_id = client.files.create(file=("batchman-bench.jsonl", content), purpose="batch").id

    def create(n: int) -> str:
        return client.batches.create(
            input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h", metadata={"bench": str(n)}
        ).id

    with ThreadPoolExecutor(4) as pool:
        remote = list(pool.map(create, range(BATCHES)))
    with psycopg.connect(db_url) as conn:
        rows = []
        for n, batch_id in enumerate(remote):
            (bid,) = conn.execute(
                _INSERT_BATCH, (ENDPOINT, MODEL, PER_BATCH, 1000, 100, file_id, batch_id)
            ).fetchone()
            rows += [
                (f"b{n}-{c}", ENDPOINT, MODEL, _line(c), 100, 10, _DELIVERY, bid, "openai_processing")
                for c in ids
            ]
        queued = [
            (f"q-{i}", ENDPOINT, f"{MODEL}-{i % 5}", _line(f"q-{i}", f"{MODEL}-{i % 5}"), 100, 10, _DELIVERY)
            for i in range(QUEUED)
        ]
        with conn.cursor().copy(_COPY_REQUESTS) as cp:
            for row in rows:
                cp.write_row(row)
        with conn.cursor().copy(_COPY_REQUESTS.replace(", batch_id, state)", ")")) as cp:
            for row in queued:
                cp.write_row(row)
        conn.execute("ANALYZE")
    seconds = time.monotonic() - started
    print(f"  set up {BATCHES:,} batches in flight and {QUEUED:,} queued requests in {seconds:.1f} s")


def tick_all(defs, instance, cursors: dict, label: str) -> float:
    """Each sensor TICKS times; reports median and max; returns the slowest tick."""
    import dagster as dg

    slowest = 0.0
    for sensor in defs.sensors:
        name = sensor.name
        times, runs = [], 0
        for _ in range(TICKS):
            started = time.monotonic()
            with dg.build_sensor_context(
                instance=instance, resources=defs.resources, cursor=cursors.get(name)
            ) as context:
                result = defs.get_sensor_def(name)(context)
            requests = list(getattr(result, "run_requests", None) or [])
            for p in getattr(result, "dynamic_partitions_requests", None) or []:
                instance.add_dynamic_partitions(p.partitions_def_name, p.partition_keys)
            times.append(time.monotonic() - started)
            cursors[name] = getattr(result, "cursor", None) or cursors.get(name)
            runs += len(requests)
        slowest = max(slowest, max(times))
        report(
            f"{label}: {name} (median / max of {TICKS}, {runs} run requests)",
            statistics.median(times),
            "s",
            f"max {max(times):.2f} s (target < {TARGET_SECONDS:.0f} s)",
        )
    return slowest


_QUERIES = {
    "asset catalog with partition counts": """query { assetNodes { assetKey { path }
        partitionStats { numMaterialized numPartitions numFailed } } }""",
    "results_job partition status": """query($sel: RepositorySelector!) {
        partitionSetsOrError(repositorySelector: $sel, pipelineName: "results_job") {
          ... on PartitionSets { results { name partitionStatusesOrError {
            ... on PartitionStatuses { results { partitionName runStatus } } } } } } }""",
    "run list (50)": """query { runsOrError(limit: 50) { ... on Runs { results { runId status tags
        { key value } } } } }""",
    "sensors overview": """query($sel: RepositorySelector!) { sensorsOrError(repositorySelector: $sel) {
        ... on Sensors { results { name sensorState { status ticks(limit: 10) { status timestamp } } } } }
        }""",
}


def ui_loads(env: dict[str, str], tmp: Path) -> None:
    port = free_port()
    argv = dp.webserver_argv("127.0.0.1", port, ROOT / "workspace.yaml")
    log = (tmp / "webserver.log").open("w")
    proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}{dp.WEBSERVER_PATH_PREFIX}"
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            deadline = time.monotonic() + 240
            while True:
                try:
                    if http.get("/server_info").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"dagster-webserver did not start: see {tmp / 'webserver.log'}")
                time.sleep(0.5)
            repo = {"repositoryName": "__repository__", "repositoryLocationName": dp.LOCATION_NAME}
            _measure("UI: HTML of /dagster/", lambda: http.get("/").raise_for_status())
            for name, query in _QUERIES.items():
                vars_ = {"sel": repo} if "$sel" in query else {}

                def load(query: str = query, vars_: dict = vars_, name: str = name) -> None:
                    answer = http.post(
                        "/graphql", json={"query": query, "variables": vars_}
                    ).raise_for_status()
                    if answer.json().get("errors"):
                        raise RuntimeError(f"{name}: {answer.json()['errors']}")

                _measure(f"UI: {name}", load)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _measure(name: str, call) -> None:
    times = []
    for _ in range(3):
        started = time.monotonic()
        call()
        times.append(time.monotonic() - started)
    report(name, statistics.median(times) * 1000, "ms")


class _Sim:
    """The simulator in its own process, as ``batchman up`` runs it: its work (finishing 1,000
    batches, writing their output files) is OpenAI's, not part of a sensor tick's own cost."""

    def __init__(self, tmp: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "SIMULATOR_DATA_DIR": str(tmp / "sim"),
            "SIMULATOR_FREEZE_CLOCK": "true",
            "SIMULATOR_VALIDATING_SECONDS": "1",
            "SIMULATOR_IN_PROGRESS_SECONDS": "3600",
            "SIMULATOR_FINALIZING_SECONDS": "1",
            "SIMULATOR_LOG_LEVEL": "warning",
        }
        argv = [
            sys.executable,
            "-m",
            "batch_pipeline.cli",
            "simulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        self.proc = subprocess.Popen(argv, env=env, cwd=tmp)
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{self.url}/_sim/health", timeout=2).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the simulator did not start") from None
                time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-sensors-") as tmp_name, postgres_server() as server:
        tmp = Path(tmp_name)
        sim = _Sim(tmp)
        try:
            with fresh_database(server) as db_url:
                _run(tmp, sim, db_url)
        finally:
            sim.stop()


def _run(tmp: Path, sim: _Sim, db_url: str) -> None:
    import dagster as dg
    import openai

    for noisy in ("httpx", "httpx2", "openai"):  # one line per HTTP call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from batch_pipeline.defs.definitions import build_definitions

    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="sk-bench", max_retries=0)
    populate(db_url, client)
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dagster_storage_url(db_url),
        "DATABASE_URL": db_url,
        "OPENAI_BASE_URL": f"{sim.url}/v1",
        "OPENAI_API_KEY": "sk-bench",
        "DATA_DIR": str(tmp / "data"),
        "SENSOR_INTERVAL_SECONDS": "1",
        "OPENAI_POLL_INTERVAL_SECONDS": "1",
    }
    os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "DAGSTER_PG_URL")})
    settings = Settings(
        _env_file=None,
        database_url=db_url,
        openai_base_url=f"{sim.url}/v1",
        openai_api_key="sk-bench",
        sensor_interval_seconds=1,
        openai_poll_interval_seconds=1,
        data_dir=tmp / "data",
    )
    defs = build_definitions(settings, dsn=db_url)
    with dg.DagsterInstance.get() as instance:
        with psycopg.connect(db_url) as conn:
            keys = [str(r[0]) for r in conn.execute("SELECT id FROM batchman.batches ORDER BY id")]
        instance.add_dynamic_partitions("batches", keys)
        cursors: dict = {}
        slowest = tick_all(defs, instance, cursors, "in flight")
        httpx.post(f"{sim.url}/_sim/advance", json={"seconds": 7200}).raise_for_status()
        slowest = max(slowest, tick_all(defs, instance, cursors, "all done"))
        with psycopg.connect(db_url) as conn:
            states = dict(conn.execute("SELECT state, count(*) FROM batchman.batches GROUP BY 1").fetchall())
        print(f"  batches by state after the ticks: {states}")
        print(f"  slowest tick: {slowest:.2f} s (target < {TARGET_SECONDS:.0f} s)")
    ui_loads(env, tmp)


if __name__ == "__main__":
    main()
