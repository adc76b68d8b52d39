"""Lineage and asset checks: each stage run records its batch's materialization and the checks it
can decide, in Dagster's own instance, as the UI reads them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from batch_pipeline.defs import assets
from batch_pipeline.defs.definitions import build_definitions
from tests.conftest import WebhookReceiver

STAGES = ("batching_sensor", "status_sensor")
KEYS = [
    assets.ASSET_BATCH_INPUT,
    assets.ASSET_OPENAI_BATCH,
    assets.ASSET_BATCH_RESULTS,
    assets.ASSET_BATCH_DELIVERIES,
]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


def to_webhook(db_url: str, url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET delivery_config = %s",
            (json.dumps({"type": "webhook", "webhook_url": url}),),
        )


def materializations(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> list:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=20, ascending=True
    ).records
    return [r.asset_materialization for r in records]


def check_history(instance: dg.DagsterInstance, key: dg.AssetKey, name: str) -> list:
    check_key = dg.AssetCheckKey(key, name)
    return list(instance.event_log_storage.get_asset_check_execution_history(check_key, limit=20))


def passed(record) -> bool:
    return record.status == AssetCheckExecutionRecordStatus.SUCCEEDED


def test_definitions_show_the_lineage_and_the_checks(pipeline_settings, db_url) -> None:
    defs = build_definitions(pipeline_settings, dsn=db_url)
    graph = defs.resolve_asset_graph()
    assert graph.get(assets.ASSET_BATCH_DELIVERIES).parent_keys == {assets.ASSET_BATCH_RESULTS}
    assert graph.get(assets.ASSET_BATCH_RESULTS).parent_keys == {assets.ASSET_OPENAI_BATCH}
    assert graph.get(assets.ASSET_OPENAI_BATCH).parent_keys == {assets.ASSET_BATCH_INPUT}
    assert graph.get(assets.ASSET_BATCH_INPUT).parent_keys == {assets.REQUESTS}
    assert not graph.get(assets.REQUESTS).is_materializable  # external: the API writes it
    assert all(graph.get(k).partitions_def.name == "batches" for k in KEYS)
    checks = {(c.asset_key, c.name) for c in graph.asset_check_keys}
    assert checks == {
        (assets.ASSET_BATCH_RESULTS, assets.ACCOUNTED),
        (assets.ASSET_BATCH_DELIVERIES, assets.NOT_STUCK),
        (assets.ASSET_BATCH_INPUT, assets.INPUT_LINES),
    }


def test_one_batch_history_covers_every_stage(driver, db_url, add_requests, receiver) -> None:
    add_requests("/v1/chat/completions", "gpt-4o-mini", 3)
    to_webhook(db_url, receiver.url)
    driver.drive()
    assert driver.query("SELECT state FROM batchman.batches")[0]["state"] == "delivered"
    inst = driver.instance

    (inp,) = materializations(inst, assets.ASSET_BATCH_INPUT, "1")
    assert inp.metadata["request_count"].value == 3 and inp.metadata["bytes"].value > 0
    assert inp.metadata["estimated_tokens"].value == 30
    assert str(inp.metadata["input_file_id"].value).startswith("file")  # simulator: an id, not a link
    created, finished = materializations(inst, assets.ASSET_OPENAI_BATCH, "1")
    assert str(created.metadata["openai_batch_id"].value).startswith("batch_")
    assert finished.metadata["openai_status"].value == "completed"
    assert finished.metadata["input_tokens"].value > 0 and finished.metadata["completed"].value == 3
    (results,) = materializations(inst, assets.ASSET_BATCH_RESULTS, "1")
    assert results.metadata["requests_by_state"].value == {"openai_processed": 3}
    deliveries = materializations(inst, assets.ASSET_BATCH_DELIVERIES, "1")
    assert deliveries[-1].metadata["attempt_outcomes"].value == {"success": 3}
    assert deliveries[-1].metadata["batch_state"].value == "delivered"

    for key, name in [
        (assets.ASSET_BATCH_RESULTS, assets.ACCOUNTED),
        (assets.ASSET_BATCH_INPUT, assets.INPUT_LINES),
        (assets.ASSET_BATCH_DELIVERIES, assets.NOT_STUCK),
    ]:
        history = check_history(inst, key, name)
        assert history and all(passed(r) for r in history), (key, name)
        assert history[0].partition == "1"


def test_accounting_check_fails_when_a_request_is_counted_twice(driver, db_url, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 3)
    driver.drive(rounds=1, stages=("batching_sensor",), advance=False)  # at OpenAI
    # A request slipped into the batch after its file was built: OpenAI never saw it, so the results
    # run resubmits it, and the batch accounts for 4 requests out of 3.
    add_requests("/v1/responses", "gpt-4o-mini", 1, prefix="late")
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET batch_id = 1, state = 'openai_processing'"
            " WHERE custom_id = 'late-0'"
        )
    driver.drive(stages=STAGES)
    history = check_history(driver.instance, assets.ASSET_BATCH_RESULTS, assets.ACCOUNTED)
    (record,) = [r for r in history if r.partition == "1"]
    # The resubmitted request went through a second batch, which accounts for it correctly.
    assert all(passed(r) for r in history if r.partition != "1")
    assert record.status == AssetCheckExecutionRecordStatus.FAILED
    evaluation = record.event.asset_check_evaluation
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["missing (-) or twice (+)"].value == 1


def test_checks_run_by_hand_per_partition(driver, db_url, add_requests) -> None:
    add_requests("/v1/responses", "gpt-4o-mini", 2)
    driver.drive(stages=STAGES)
    # A delivery run died holding a claim: its lease is over, the request is still 'delivering'.
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET state = 'delivering', claimed_until = now() - interval '1 minute'"
            " WHERE id = (SELECT min(id) FROM batchman.requests)"
        )
    result = driver.defs.resolve_job_def("checks_job").execute_in_process(
        instance=driver.instance, partition_key="1"
    )
    assert result.output_for_node("evaluate_checks") == 1
    assert result.dagster_run.tags["batch_id"] == "1"
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations[assets.NOT_STUCK].passed is False
    assert evaluations[assets.NOT_STUCK].metadata["stuck_past_lease"].value == 1
    assert evaluations[assets.ACCOUNTED].passed is True
    assert evaluations[assets.INPUT_LINES].passed is True
    records = check_history(driver.instance, assets.ASSET_BATCH_DELIVERIES, assets.NOT_STUCK)
    assert records[0].partition == "1" and not passed(records[0])
