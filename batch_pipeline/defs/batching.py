"""The batching sensor: open a batch for each full or stale (endpoint, model) group, admit batches
that waited for capacity, and hand each to an upload run (one per batch, keyed by its launch count).
The upload run fills its batch with the group's oldest requests (``store.batching.fill_batch``)."""

import dagster as dg

from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import PostgresParam, SettingsParam
from batch_pipeline.model_limits import token_limit_for
from batch_pipeline.stages.batching import open_due_batches
from batch_pipeline.stages.capacity import admit_waiting
from batch_pipeline.states import UPLOAD_WORKING
from batch_pipeline.store import batches as store
from batch_pipeline.store.model_limits import fetch_overrides_sync

MAX_RUN_REQUESTS_PER_TICK = 100


def upload_run_request(batch_id: int, launch_count: int) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"upload:{batch_id}:{launch_count}",
        partition_key=str(batch_id),
        tags={"batch_id": str(batch_id), "stage": "upload"},
    )


def make_batching_sensor(upload_job: dg.JobDefinition, interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="batching_sensor",
        job=upload_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Cuts full or stale (endpoint, model) groups into batches and launches their uploads.",
    )
    def batching_sensor(
        context: dg.SensorEvaluationContext, postgres: PostgresParam, settings: SettingsParam
    ) -> dg.SensorResult:
        with postgres.connect() as conn:
            overrides = fetch_overrides_sync(conn)

            def limit_for(model: str) -> int:
                return token_limit_for(model, overrides)

            opened = open_due_batches(conn, settings, limit_for)
            admitted = admit_waiting(conn, limit_for)
            ready = store.ready_for_upload(conn, MAX_RUN_REQUESTS_PER_TICK)
            # 'ready' too: an upload run that never started (its launch timed out on a busy box, or
            # it failed before its claim) leaves the batch there, and its run key is spent.
            stalled = store.relaunch_stalled(conn, ("ready", *UPLOAD_WORKING))
        if stalled:
            context.log.warning("relaunching stalled uploads of batches %s", [r["id"] for r in stalled])
        if opened:
            context.log.info("opened batches %s", opened)
        launches = {r["id"]: r["launch_count"] for r in [*ready, *stalled]}
        launches.update(dict(admitted))
        keys = [str(batch_id) for batch_id in launches]
        return dg.SensorResult(
            run_requests=[upload_run_request(b, n) for b, n in launches.items()],
            dynamic_partitions_requests=[batch_partitions.build_add_request(keys)] if keys else [],
        )

    return batching_sensor
