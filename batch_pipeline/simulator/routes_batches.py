"""``/v1/batches``: create, retrieve, cancel and list."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from .context import SimDep, json_body, list_page, require_api_key
from .validation import parse_create

router = APIRouter(prefix="/v1/batches", dependencies=[Depends(require_api_key)])


@router.post("")
async def create_batch(request: Request, sim: SimDep) -> dict[str, Any]:
    params = parse_create(await json_body(request))
    return await run_in_threadpool(sim.batches.create, params)


@router.get("")
def list_batches(
    sim: SimDep, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> dict[str, Any]:
    data, has_more = sim.batches.list(after=after, limit=limit)
    return list_page(data, has_more)


@router.get("/{batch_id}")
def retrieve_batch(batch_id: str, sim: SimDep) -> dict[str, Any]:
    return sim.batches.view(batch_id)


@router.post("/{batch_id}/cancel")
def cancel_batch(batch_id: str, sim: SimDep) -> dict[str, Any]:
    return sim.batches.cancel(batch_id)
