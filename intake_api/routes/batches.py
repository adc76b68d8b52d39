"""``/api/batches``: list and inspect batches; upload now, cancel, restart, delete and redeliver them.

The actions change state only; the Dagster sensors do the work at their next tick (upload runs for new
'ready' batches, admission for a waiting batch made due, the status check of a cancelling batch, the
delivery run of a redelivered batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from batch_pipeline.admin import batches as admin
from batch_pipeline.admin import cancel, files, usage
from batch_pipeline.admin.errors import (
    BatchNotFound,
    FileNotAvailable,
    InvalidBatchState,
    NotRedeliverable,
    OpenAICallFailed,
)
from batch_pipeline.pricing import load_prices
from intake_api.deps import ConnDep, PoolDep, SettingsDep, require_token
from intake_api.errors import ApiError
from intake_api.schemas import EndpointUrl, errors_doc
from intake_api.schemas_batches import (
    NO_NUL,
    BatchAction,
    BatchDetail,
    BatchPage,
    BatchRedelivered,
    BatchState,
    CancelResult,
    RestartResult,
    UploadNowInput,
    UploadNowResult,
)

router = APIRouter(prefix="/api/batches", tags=["batches"], dependencies=[Depends(require_token)])


@contextmanager
def _as_api_errors() -> Iterator[None]:
    """The admin service's refusals as API errors, in the error envelope."""
    try:
        yield
    except BatchNotFound as exc:
        raise ApiError(404, "not_found", "Batch Not Found", str(exc)) from None
    except InvalidBatchState as exc:
        raise ApiError(409, "invalid_batch_state", "Invalid Batch State", str(exc)) from None
    except NotRedeliverable as exc:
        raise ApiError(422, "invalid_state", "Invalid Batch State", str(exc)) from None
    except OpenAICallFailed as exc:
        raise ApiError(502, "openai_error", "OpenAI Error", str(exc)) from None


@router.get(
    "", response_model=BatchPage, responses=errors_doc(401, 422), summary="List batches, newest first"
)
async def list_batches(
    conn: ConnDep,
    state: BatchState | None = None,
    model: Annotated[str | None, Query(pattern=NO_NUL)] = None,
    endpoint: EndpointUrl | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(description="Cursor: the next_cursor of the previous page")] = None,
) -> dict:
    flt = admin.BatchFilter(state=state, model=model, endpoint=endpoint)
    rows = await admin.list_batches(conn, flt, limit + 1, before)
    page = rows[:limit]
    return {"data": page, "next_cursor": page[-1]["id"] if len(rows) > limit else None}


@router.post(
    "/upload",
    status_code=202,
    response_model=UploadNowResult,
    responses=errors_doc(401, 422),
    summary="Cut batches now from the queued requests (all groups, or one endpoint and/or model)",
)
async def upload_queued(
    request: Request,
    settings: SettingsDep,
    body: Annotated[UploadNowInput | None, Body()] = None,
) -> dict:
    body = body or UploadNowInput()
    # The cutter is the batching sensor's (sync psycopg); it gets its own connection to the same database.
    dsn = request.app.state.pool.conninfo
    cut = await admin.upload_queued(dsn, settings, endpoint=body.endpoint, model=body.model)
    message = (
        f"{len(cut)} batches cut; their uploads start at the next sensor tick" if cut else "Nothing queued"
    )
    return {"batch_ids": [b["id"] for b in cut], "batches": cut, "message": message}


@router.get(
    "/{batch_id}",
    response_model=BatchDetail,
    responses=errors_doc(401, 404, 422),
    summary="A batch with its request counts per state, transitions, OpenAI ids and usage",
)
async def get_batch(batch_id: int, conn: ConnDep, settings: SettingsDep) -> dict:
    with _as_api_errors():
        detail = await admin.get_batch(conn, batch_id)
    prices = load_prices(settings.model_prices_file)
    detail["cost"] = await usage.batch_cost(conn, batch_id, prices=prices)
    return detail


@router.get(
    "/{batch_id}/files/{kind}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/jsonl": {}}, "description": "The file, streamed from OpenAI."},
        **errors_doc(401, 404, 409, 422, 502),
    },
    summary="Download the batch's input, output or error file (streamed, never held whole)",
)
async def get_batch_file(
    batch_id: int, kind: Literal["input", "output", "error"], pool: PoolDep, settings: SettingsDep
) -> StreamingResponse:
    with _as_api_errors():
        try:
            # Found and answered by OpenAI before the headers go out, so errors get their status.
            stream = await files.open_batch_file(settings, pool, batch_id, kind)
        except FileNotAvailable as exc:
            raise ApiError(409, "file_not_available", "File Not Available", str(exc)) from None
    name = files.download_name(batch_id, kind)
    return StreamingResponse(
        stream,
        media_type="application/jsonl",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post(
    "/{batch_id}/upload",
    status_code=202,
    response_model=BatchAction,
    responses=errors_doc(401, 404, 409, 422),
    summary="Check the capacity of a batch waiting for it now, instead of at its next scheduled check",
)
async def upload_waiting(batch_id: int, conn: ConnDep) -> dict:
    with _as_api_errors():
        row = await admin.upload_waiting(conn, batch_id)
    return {**row, "message": "Capacity check due now; the batch is submitted as soon as it fits"}


@router.post(
    "/{batch_id}/cancel",
    status_code=202,
    response_model=CancelResult,
    responses=errors_doc(401, 404, 409, 422, 502),
    summary="Cancel a batch, at OpenAI too when it is there",
)
async def cancel_batch(batch_id: int, conn: ConnDep, settings: SettingsDep) -> dict:
    with _as_api_errors():
        result = await cancel.cancel_batch(conn, settings, batch_id)
    if result["state"] == "cancelling":
        message = "Cancelling at OpenAI; partial results are collected and delivered when it has stopped"
    else:
        message = f"Cancelled with {result['cancelled_requests']} requests"
    return {**result, "message": message}


@router.post(
    "/{batch_id}/restart",
    status_code=202,
    response_model=RestartResult,
    responses=errors_doc(401, 404, 409, 422),
    summary="Put a failed batch's undelivered requests back in the queue",
)
async def restart_batch(batch_id: int, conn: ConnDep) -> dict:
    with _as_api_errors():
        result = await admin.restart_batch(conn, batch_id)
    return {**result, "message": f"{result['requeued_requests']} requests back in the queue"}


@router.delete(
    "/{batch_id}",
    status_code=204,
    response_class=Response,
    responses=errors_doc(401, 404, 409, 422),
    summary="Delete a finished batch with its requests",
)
async def delete_batch(batch_id: int, conn: ConnDep) -> Response:
    with _as_api_errors():
        await admin.delete_batch(conn, batch_id)
    return Response(status_code=204)


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
    with _as_api_errors():
        result = await admin.redeliver_batch(conn, batch_id, only)
    return {**result, "message": f"Redelivery triggered for {result['requeued']} requests"}
