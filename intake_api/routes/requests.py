"""``/api/requests``: submit (one or bulk), look up, list and redeliver requests."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated

import msgspec
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from batch_pipeline.admin import intake_control
from batch_pipeline.admin import requests as admin
from batch_pipeline.admin.errors import NotRedeliverable, RequestNotFound
from batch_pipeline.intake.service import TooManyItems
from batch_pipeline.states import REQUEST_STATES
from intake_api.body import (
    THREAD_SPLIT_BYTES,
    is_ndjson,
    read_buffer,
    read_limited,
    split_array,
    stream_ndjson,
    too_many_items,
)
from intake_api.deps import ConnDep, IntakeDep, SettingsDep, require_token
from intake_api.errors import ApiError, ApiErrors
from intake_api.schemas import (
    Accepted,
    BulkResponse,
    Redelivered,
    RequestDetail,
    RequestPage,
    errors_doc,
)

router = APIRouter(prefix="/api/requests", tags=["requests"], dependencies=[Depends(require_token)])


def _request_body_doc(schema_ref: str, ndjson: bool = False) -> dict:
    content = {"application/json": {"schema": {"$ref": schema_ref}}}
    if ndjson:
        content["application/json"] = {"schema": {"type": "array", "items": {"$ref": schema_ref}}}
        content["application/x-ndjson"] = {"schema": {"$ref": schema_ref}}
    return {"requestBody": {"required": True, "content": content}}


@contextmanager
def _as_api_errors() -> Iterator[None]:
    """The admin service's refusals as API errors, in the error envelope."""
    try:
        yield
    except RequestNotFound as exc:
        raise ApiError(404, "not_found", "Request Not Found", str(exc)) from None
    except NotRedeliverable as exc:
        raise ApiError(422, "invalid_state", "Invalid Request State", str(exc)) from None


async def _refuse_while_paused(conn: ConnDep) -> None:
    """503 ``maintenance_mode`` (the Elixir service's envelope) while intake is paused. The flag is
    cached per process for about a second (``admin.intake_control``): no query per request."""
    if await intake_control.is_paused(conn):
        raise ApiError(
            503,
            "maintenance_mode",
            "Service Temporarily Unavailable",
            "Request intake is temporarily paused for maintenance. Please retry shortly.",
        )


@router.post(
    "",
    status_code=202,
    response_model=Accepted,
    responses=errors_doc(401, 409, 413, 422, 503),
    openapi_extra=_request_body_doc("#/components/schemas/RequestInput"),
    summary="Submit one request",
)
async def create_request(
    request: Request, conn: ConnDep, intake: IntakeDep, settings: SettingsDep
) -> Response:
    await _refuse_while_paused(conn)
    raw = await read_limited(request, settings.intake_max_body_bytes)
    outcome = await intake.submit(conn, raw)
    if outcome.status == "accepted":
        return Response(orjson.dumps({"custom_id": outcome.custom_id}), 202, media_type="application/json")
    if outcome.status == "duplicate":
        raise ApiError(
            409,
            "duplicate_custom_id",
            "Custom ID Already Exists",
            "A request with this custom_id already exists in the batch",
            "/custom_id",
        )
    raise ApiErrors(413 if outcome.status == "too_large" else 422, outcome.errors)


@router.post(
    "/bulk",
    response_model=BulkResponse,
    responses=errors_doc(401, 413, 422, 503),
    openapi_extra=_request_body_doc("#/components/schemas/RequestInput", ndjson=True),
    summary="Submit many requests (JSON array or NDJSON); one result per item",
)
async def create_bulk(request: Request, conn: ConnDep, intake: IntakeDep, settings: SettingsDep) -> Response:
    await _refuse_while_paused(conn)
    content_type = request.headers.get("content-type", "")
    if is_ndjson(content_type):
        items: AsyncIterator | list = stream_ndjson(request, settings.bulk_max_body_bytes)
    else:
        raw = await read_buffer(request, settings.bulk_max_body_bytes)
        limit = settings.bulk_max_items
        items = (
            await asyncio.to_thread(split_array, raw, limit)
            if len(raw) >= THREAD_SPLIT_BYTES
            else split_array(raw, limit)
        )
    try:
        outcomes = await intake.submit_bulk(conn, items, max_items=settings.bulk_max_items)
    except TooManyItems as exc:
        raise too_many_items(exc.limit) from None
    if not outcomes:
        raise ApiError(422, "validation_error", "Invalid value", "No requests in the body.", "/")
    counts = Counter(o.status for o in outcomes)
    body = {
        "accepted": counts["accepted"],
        "duplicate": counts["duplicate"],
        "invalid": len(outcomes) - counts["accepted"] - counts["duplicate"],
        "results": outcomes,  # Outcome structs encode as the per-item results
    }
    return Response(msgspec.json.encode(body), 200, media_type="application/json")


@router.get("", response_model=RequestPage, responses=errors_doc(401, 422), summary="List requests")
async def list_requests(
    conn: ConnDep,
    state: str | None = None,
    batch_id: int | None = None,
    model: str | None = None,
    url: str | None = None,
    q: Annotated[str | None, Query(description="Same as custom_id_contains")] = None,
    custom_id_contains: Annotated[
        str | None, Query(description="Substring of custom_id (indexed for 3 or more characters)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(description="Cursor: the next_cursor of the previous page")] = None,
) -> dict:
    for name, value in (
        ("state", state),
        ("model", model),
        ("url", url),
        ("q", q),
        ("custom_id_contains", custom_id_contains),
    ):
        if value and "\x00" in value:
            raise ApiError(
                422, "validation_error", "Invalid value", f"{name} must not contain NUL", f"/{name}"
            )
    if state is not None and state not in REQUEST_STATES:
        detail = f"state must be one of {', '.join(REQUEST_STATES)}"
        raise ApiError(422, "validation_error", "Invalid value", detail, "/state")
    flt = admin.RequestFilter(
        state=state, batch_id=batch_id, model=model, url=url, custom_id_contains=custom_id_contains or q
    )
    rows = await admin.list_requests(conn, flt, limit + 1, before)
    page = rows[:limit]
    return {"data": page, "next_cursor": page[-1]["id"] if len(rows) > limit else None}


@router.post(
    "/{custom_id:path}/redeliver",
    status_code=202,
    response_model=Redelivered,
    responses=errors_doc(401, 404, 422),
    summary="Deliver a stored result again",
)
async def redeliver(custom_id: str, conn: ConnDep) -> dict:
    with _as_api_errors():
        row = await admin.redeliver_request(conn, custom_id)
    return {**row, "message": "Redelivery triggered"}


@router.get(
    "/{custom_id:path}",
    response_model=RequestDetail,
    responses=errors_doc(401, 404),
    summary="Look up a request, its delivery attempts and its result",
)
async def get_request(custom_id: str, conn: ConnDep) -> dict:
    with _as_api_errors():
        return await admin.get_request(conn, custom_id)
