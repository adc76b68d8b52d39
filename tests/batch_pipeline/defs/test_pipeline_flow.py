"""The pipeline end to end in process: intake rows → batching sensor → upload run → status sensor →
results run, against the simulator, on every endpoint and through the failure paths."""

from __future__ import annotations

import json

import pytest

from batch_pipeline.endpoints import SUPPORTED_URLS


def add_requests(driver, url: str, model: str, n: int, prefix: str = "r", **body_extra) -> list[str]:
    ids = []
    rows = []
    for i in range(n):
        custom_id = f"{prefix}-{i}"
        body = {"model": model, "input": f"question {i}", "prompt": f"question {i}", **body_extra}
        if url == "/v1/chat/completions":
            body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], **body_extra}
        line = json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})
        rows.append((custom_id, url, model, line, len(line), 10))
        ids.append(custom_id)
    import psycopg

    with psycopg.connect(driver.db_url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO batchman.requests (custom_id, endpoint, model, payload, payload_bytes, estimated_tokens,"
            ' delivery_config) VALUES (%s, %s, %s, %s, %s, %s, \'{"type":"rabbitmq","rabbitmq_queue":"q"}\')',
            rows,
        )
    return ids


def states(driver) -> dict[str, int]:
    return {
        r["state"]: r["n"]
        for r in driver.query("SELECT state, count(*) AS n FROM batchman.requests GROUP BY 1")
    }


STAGES = ("batching_sensor", "status_sensor")


@pytest.mark.parametrize("url", SUPPORTED_URLS)
def test_happy_path_every_endpoint(driver, sim, url: str) -> None:
    model = "text-embedding-3-small" if "embeddings" in url else "gpt-4o-mini"
    extra = {"image": "https://images.example/cat.png"} if url == "/v1/images/edits" else {}
    add_requests(driver, url, model, 5, **extra)
    driver.drive(stages=STAGES)
    assert states(driver) == {"openai_processed": 5}, [r.success for r in driver.runs]
    rows = driver.query("SELECT result, error_msg FROM batchman.requests")
    assert all(r["result"]["response"]["status_code"] == 200 and r["error_msg"] is None for r in rows)
    batch = driver.query("SELECT * FROM batchman.batches")[0]
    assert batch["state"] == "ready_to_deliver"
    assert batch["openai_batch_id"].startswith("batch_")
    transitions = [
        r["to_state"] for r in driver.query("SELECT to_state FROM batchman.batch_transitions ORDER BY id")
    ]
    assert transitions == [
        "ready",
        "uploading",
        "uploaded",
        "openai_processing",
        "openai_completed",
        "downloading",
        "ready_to_deliver",
    ]
    assert sim.stats()["batches_created"] == 1


def test_rerunning_a_finished_results_run_changes_nothing(driver) -> None:
    add_requests(driver, "/v1/responses", "gpt-4o-mini", 3)
    driver.drive(stages=STAGES)
    before = driver.query("SELECT id, state, result, updated_at FROM batchman.requests ORDER BY id")
    results_run = [r for r in driver.runs if r.dagster_run.job_name == "results_job"][0]
    import dagster as dg

    again = driver.defs.resolve_job_def("results_job").execute_in_process(
        instance=driver.instance, partition_key=results_run.dagster_run.tags["dagster/partition"]
    )
    assert again.success
    assert driver.query("SELECT id, state, result, updated_at FROM batchman.requests ORDER BY id") == before
    assert isinstance(again, dg.ExecuteInProcessResult)
