"""The pipeline's data as assets partitioned by batch, and the checks on them.

Lineage: ``requests`` (external: rows the API and the RabbitMQ consumer write, never materialized by
Dagster) → ``batch_input`` (the uploaded JSONL) → ``openai_batch`` (the job at OpenAI) →
``batch_results`` (stored output and error lines) → ``batch_deliveries`` (webhooks / queue messages).

Why asset *specs* reported by the stage ops, not ``@asset`` functions: every stage has side effects
(an upload, a paid OpenAI batch, webhooks to clients). As ``@asset``s, the UI's "Materialize" button,
auto-materialization and lineage-driven backfills of "stale" downstreams would re-run uploads and
deliveries whenever Dagster thinks data is stale, and the stages' state machine (a conditional
transition first) would be hidden behind Dagster's own idea of freshness. So the ops stay the jobs
the sensors launch (with their retry policies and one-run-per-batch tags), and each op logs an
``AssetMaterialization`` for its batch's partition (see ``defs/reports.py``) plus the evaluations of
the checks below. The Lineage page shows the graph; a batch's partition page shows its history.

Partitioned asset checks are a preview feature in Dagster 1.13 (``partitions_def`` on a check); the
pinned version is tested here, and its PreviewWarning is silenced where the checks are declared.

The checks are also executable on their own (Catalog, the asset, Checks, Execute; per partition): they
only read the app database.
"""

import warnings

import dagster as dg

from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import PostgresParam
from batch_pipeline.store import checks as store

REQUESTS = dg.AssetKey("requests")
ASSET_BATCH_INPUT = dg.AssetKey("batch_input")
ASSET_OPENAI_BATCH = dg.AssetKey("openai_batch")
ASSET_BATCH_RESULTS = dg.AssetKey("batch_results")
ASSET_BATCH_DELIVERIES = dg.AssetKey("batch_deliveries")

GROUP = "batch_pipeline"

requests_spec = dg.AssetSpec(
    REQUESTS,
    description="Requests taken in by the API and the RabbitMQ consumer (batchman.requests); external.",
    group_name=GROUP,
    kinds={"postgres"},
)
batch_input_spec = dg.AssetSpec(
    ASSET_BATCH_INPUT,
    deps=[REQUESTS],
    partitions_def=batch_partitions,
    description="The batch's JSONL input file, uploaded to OpenAI by upload_job.",
    group_name=GROUP,
    kinds={"openai"},
)
openai_batch_spec = dg.AssetSpec(
    ASSET_OPENAI_BATCH,
    deps=[ASSET_BATCH_INPUT],
    partitions_def=batch_partitions,
    description="The batch job at OpenAI: created by upload_job, finished as seen by status_sensor.",
    group_name=GROUP,
    kinds={"openai"},
)
batch_results_spec = dg.AssetSpec(
    ASSET_BATCH_RESULTS,
    deps=[ASSET_OPENAI_BATCH],
    partitions_def=batch_partitions,
    description="Every output and error line stored on its request by results_job.",
    group_name=GROUP,
    kinds={"postgres"},
)
batch_deliveries_spec = dg.AssetSpec(
    ASSET_BATCH_DELIVERIES,
    deps=[ASSET_BATCH_RESULTS],
    partitions_def=batch_partitions,
    description="The batch's results sent to their webhooks or queues by deliver_job / redeliver_job.",
    group_name=GROUP,
    kinds={"postgres"},
)
ASSET_SPECS = [requests_spec, batch_input_spec, openai_batch_spec, batch_results_spec, batch_deliveries_spec]

ACCOUNTED = "every_request_accounted_for"
NOT_STUCK = "nothing_stuck_delivering"
INPUT_LINES = "input_lines_match_requests"

# States in which a batch's results have been stored (the accounting check applies).
RESULTS_STORED = (
    "ready_to_deliver",
    "delivering",
    "delivered",
    "partially_delivered",
    "delivery_failed",
    "resubmitted",
)


def accounting(conn, batch_id: int) -> dg.AssetCheckResult | None:
    """Every request of the batch has a result or error line, or was resubmitted; none twice.

    None before the results are stored (nothing to judge yet)."""
    row = store.request_accounting(conn, batch_id)
    if row is None or row["state"] not in RESULTS_STORED:
        return None
    accounted = row["settled"] + row["resubmitted_count"]
    passed = row["unresolved"] == 0 and accounted == row["request_count"]
    return dg.AssetCheckResult(
        asset_key=ASSET_BATCH_RESULTS,
        check_name=ACCOUNTED,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "request_count": row["request_count"],
            "with_result_or_error": row["settled"],
            "resubmitted": row["resubmitted_count"],
            "still_waiting": row["unresolved"],
            "missing (-) or twice (+)": accounted - row["request_count"],
        },
        description=None if passed else f"batch {batch_id}: requests missing, waiting or counted twice",
    )


def stuck(conn, batch_id: int, grace_seconds: float) -> dg.AssetCheckResult:
    """No request of the batch is still claimed (``delivering``) after its lease ran out."""
    row = store.stuck_delivering(conn, batch_id, grace_seconds)
    passed = row["stuck"] == 0
    return dg.AssetCheckResult(
        asset_key=ASSET_BATCH_DELIVERIES,
        check_name=NOT_STUCK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "stuck_past_lease": row["stuck"],
            "oldest_claim_until": str(row["oldest_claim"] or ""),
            "grace_seconds": grace_seconds,
        },
        description=None if passed else f"batch {batch_id}: {row['stuck']} requests stuck in delivering",
    )


def input_lines(conn, batch_id: int) -> dg.AssetCheckResult | None:
    """The input file's line count, as OpenAI counted it (its ``request_counts.total``), equals the
    batch's request count. None until OpenAI has reported it (or when OpenAI failed the batch before
    parsing the file, which the results stage turns into error lines)."""
    row = store.request_accounting(conn, batch_id)
    if row is None or row["openai_total"] is None or row["openai_status"] == "failed":
        return None
    passed = row["openai_total"] == row["request_count"]
    return dg.AssetCheckResult(
        asset_key=ASSET_BATCH_INPUT,
        check_name=INPUT_LINES,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"input_file_lines": row["openai_total"], "request_count": row["request_count"]},
        description=None if passed else f"batch {batch_id}: input lines differ from its request count",
    )


def as_evaluation(result: dg.AssetCheckResult, partition: str) -> dg.AssetCheckEvaluation:
    """The event an op logs for a check it evaluated on its own batch."""
    return dg.AssetCheckEvaluation(
        asset_key=result.asset_key,
        check_name=result.check_name,
        passed=result.passed,
        metadata=result.metadata,
        severity=result.severity,
        description=result.description,
        partition=partition,
    )


def _skipped(key: dg.AssetKey, name: str) -> dg.AssetCheckResult:
    # Executed by hand on a batch that has not reached the stage: passes, and says why.
    return dg.AssetCheckResult(
        asset_key=key, check_name=name, passed=True, metadata={"evaluated": "not yet: stage not reached"}
    )


# Declared once, at import: the preview warning would otherwise be printed by every process loading us.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)

    @dg.asset_check(
        asset=ASSET_BATCH_RESULTS, name=ACCOUNTED, partitions_def=batch_partitions, blocking=False
    )
    def accounted_check(
        context: dg.AssetCheckExecutionContext, postgres: PostgresParam
    ) -> dg.AssetCheckResult:
        """Each request has a result or error line, or was resubmitted; none missing or twice."""
        with postgres.connect() as conn:
            return accounting(conn, int(context.partition_key)) or _skipped(ASSET_BATCH_RESULTS, ACCOUNTED)

    @dg.asset_check(asset=ASSET_BATCH_DELIVERIES, name=NOT_STUCK, partitions_def=batch_partitions)
    def not_stuck_check(
        context: dg.AssetCheckExecutionContext, postgres: PostgresParam
    ) -> dg.AssetCheckResult:
        """No request of the batch stays in `delivering` past its claim lease (a delivery run died)."""
        with postgres.connect() as conn:
            return stuck(conn, int(context.partition_key), 0)

    @dg.asset_check(asset=ASSET_BATCH_INPUT, name=INPUT_LINES, partitions_def=batch_partitions)
    def input_lines_check(
        context: dg.AssetCheckExecutionContext, postgres: PostgresParam
    ) -> dg.AssetCheckResult:
        """The input file's line count (as OpenAI counted it) equals the batch's request count."""
        with postgres.connect() as conn:
            return input_lines(conn, int(context.partition_key)) or _skipped(ASSET_BATCH_INPUT, INPUT_LINES)


ASSET_CHECKS = [accounted_check, not_stuck_check, input_lines_check]
