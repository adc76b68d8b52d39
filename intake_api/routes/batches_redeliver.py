"""``POST /api/batches/{batch_id}/redeliver?only=failed|all``: deliver a batch's stored results again.

The results become due now and the batch reopens to 'delivering'; the delivery sensor launches the
run within one sensor interval (or launch ``redeliver_job`` for the batch partition in Dagster).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from batch_pipeline.store import deliveries as store
from intake_api.deps import ConnDep, require_token
from intake_api.errors import ApiError
from intake_api.schemas import errors_doc

router = APIRouter(prefix="/api/batches", tags=["batches"], dependencies=[Depends(require_token)])


class BatchRedelivered(BaseModel):
    batch_id: int
    only: Literal["failed", "all"]
    requeued: int
    state: str
    message: str


@router.post(
    "/{batch_id}/redeliver",
    status_code=202,
    response_model=BatchRedelivered,
    responses=errors_doc(401, 404, 422),
    summary="Deliver a batch's results again: only those whose delivery failed, or all",
)
async def redeliver_batch(
    batch_id: int,
    conn: ConnDep,
    only: Annotated[
        Literal["failed", "all"],
        Query(description="failed: results in delivery_failed; all: every stored result"),
    ] = "failed",
) -> dict:
    result = await store.redeliver_batch(conn, batch_id, only)
    if result is None:
        raise ApiError(404, "not_found", "Batch Not Found", f"No batch found with id={batch_id}")
    if result["state"] not in store.DELIVERABLE_BATCH_STATES:
        raise ApiError(
            422,
            "invalid_state",
            "Invalid Batch State",
            f"Batch cannot be redelivered: it is in state {result['state']} and has no results yet",
        )
    return {**result, "message": f"Redelivery triggered for {result['requeued']} requests"}
