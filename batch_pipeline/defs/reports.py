"""What each stage op reports to Dagster for its batch: the materialization of its asset (figures an
operator reads at a glance) and the evaluations of the checks that stage makes decidable.

Figures come from the app database after the stage committed, so a re-run or a skipped run reports
the batch as it stands. OpenAI ids are links only where OpenAI has a page (not for the simulator or a
proxy)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import dagster as dg

from batch_pipeline.config import Settings
from batch_pipeline.defs import assets
from batch_pipeline.defs.resources import Postgres
from batch_pipeline.store import checks as store

_THE_OPENAI_API = "https://api.openai.com/v1"
_PAGE_OF_A_BATCH = "https://platform.openai.com/batches/{}"
FILE_PAGE = "https://platform.openai.com/storage/files/{}"


def log(context: dg.OpExecutionContext, postgres: Postgres, events: Callable[[Any], Iterable[Any]]) -> None:
    """Log a stage's materializations and check evaluations; a reporting error never fails the stage
    (its work is committed; the catalog is the operator's view of it)."""
    try:
        with postgres.connect() as conn:
            for event in events(conn):
                context.log_event(event)
    except Exception:
        context.log.exception(f"batch {context.partition_key}: could not report to the asset catalog")


def _id(value: str | None, page: str, settings: Settings) -> Any:
    if not value:
        return ""
    if settings.openai_client_base_url.rstrip("/") == _THE_OPENAI_API:
        return dg.MetadataValue.url(page.format(value))
    return value


def _seconds(conn, batch_id: int, start: str, end: str) -> dict[str, float]:
    seconds = store.stage_seconds(conn, batch_id, start, end)
    return {} if seconds is None else {f"seconds {start} → {end}": round(seconds, 1)}


def _present(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if v is not None}


def after_upload(conn, settings: Settings, batch_id: int, run_seconds: float) -> Iterator[Any]:
    """``batch_input`` once the file is at OpenAI, ``openai_batch`` once the batch is created there."""
    batch, _states = store.batch_figures(conn, batch_id)
    if batch is None:
        return
    partition = str(batch_id)
    if batch["openai_input_file_id"]:
        yield dg.AssetMaterialization(
            asset_key=assets.ASSET_BATCH_INPUT,
            partition=partition,
            metadata={
                "request_count": batch["request_count"],
                "bytes": batch["size_bytes"],
                "estimated_tokens": batch["estimated_tokens"],
                "model": batch["model"],
                "endpoint": batch["endpoint"],
                "input_file_id": _id(batch["openai_input_file_id"], FILE_PAGE, settings),
                "run_seconds": round(run_seconds, 1),
                **_seconds(conn, batch_id, "ready", "uploaded"),
            },
        )
    if batch["openai_batch_id"]:
        yield dg.AssetMaterialization(
            asset_key=assets.ASSET_OPENAI_BATCH,
            partition=partition,
            description="created at OpenAI",
            metadata={
                "openai_batch_id": _id(batch["openai_batch_id"], _PAGE_OF_A_BATCH, settings),
                "state": batch["state"],
                "request_count": batch["request_count"],
                "estimated_tokens": batch["estimated_tokens"],
                **_seconds(conn, batch_id, "ready", "openai_processing"),
            },
        )


def after_results(conn, settings: Settings, batch_id: int, run_seconds: float) -> Iterator[Any]:
    """``openai_batch`` as OpenAI finished it, ``batch_results``, and the accounting and input checks."""
    batch, states = store.batch_figures(conn, batch_id)
    if batch is None or batch["state"] not in assets.RESULTS_STORED:
        return
    partition = str(batch_id)
    yield dg.AssetMaterialization(
        asset_key=assets.ASSET_OPENAI_BATCH,
        partition=partition,
        description=f"finished at OpenAI: {batch['openai_status']}",
        metadata=_present(
            {
                "openai_batch_id": _id(batch["openai_batch_id"], _PAGE_OF_A_BATCH, settings),
                "openai_status": batch["openai_status"] or "",
                "completed": batch["openai_completed"],
                "failed": batch["openai_failed"],
                "total": batch["openai_total"],
                "estimated_tokens": batch["estimated_tokens"],
                "input_tokens": batch["input_tokens"],
                "cached_tokens": batch["cached_tokens"],
                "output_tokens": batch["output_tokens"],
                "reasoning_tokens": batch["reasoning_tokens"],
                **_seconds(conn, batch_id, "openai_processing", "openai_completed"),
            }
        ),
    )
    yield dg.AssetMaterialization(
        asset_key=assets.ASSET_BATCH_RESULTS,
        partition=partition,
        metadata={
            "request_count": batch["request_count"],
            "requests_by_state": dg.MetadataValue.json(states),
            "resubmitted": batch["resubmitted_count"],
            "batch_state": batch["state"],
            "output_file_id": _id(batch["openai_output_file_id"], FILE_PAGE, settings),
            "error_file_id": _id(batch["openai_error_file_id"], FILE_PAGE, settings),
            "run_seconds": round(run_seconds, 1),
            **_seconds(conn, batch_id, "openai_completed", "ready_to_deliver"),
        },
    )
    for check in (assets.accounting(conn, batch_id), assets.input_lines(conn, batch_id)):
        if check is not None:
            yield assets.as_evaluation(check, partition)


def after_delivery(conn, batch_id: int, report: dict[str, Any], run_seconds: float) -> Iterator[Any]:
    """``batch_deliveries`` for this wave, and the stuck-in-delivering check."""
    batch, states = store.batch_figures(conn, batch_id)
    if batch is None:
        return
    partition = str(batch_id)
    yield dg.AssetMaterialization(
        asset_key=assets.ASSET_BATCH_DELIVERIES,
        partition=partition,
        metadata={
            "attempts": report.get("attempts", 0),
            "attempt_outcomes": dg.MetadataValue.json(report.get("outcomes", {})),
            "requests_by_state": dg.MetadataValue.json(states),
            "batch_state": batch["state"],
            "delivery_wave": batch["delivery_wave"],
            "run_seconds": round(run_seconds, 1),
            **_seconds(conn, batch_id, "ready_to_deliver", batch["state"]),
        },
    )
    yield assets.as_evaluation(assets.stuck(conn, batch_id, 0), partition)
