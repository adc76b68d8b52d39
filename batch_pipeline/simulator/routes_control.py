"""The control surface under ``/_sim``: move the clock, finish or expire things now, read statistics,
reset, and change fault rates at runtime. Never subject to HTTP fault injection or API-key checks."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from . import engine
from .context import SimDep, json_body
from .errors import bad_request
from .settings import SimulatorConfigError, load_fault_config

router = APIRouter(prefix="/_sim")


@router.get("/health")
def health(sim: SimDep) -> dict[str, Any]:
    return {"status": "ok", "simulator": True, "now": int(sim.store.now())}


@router.post("/advance")
async def advance(request: Request, sim: SimDep) -> dict[str, Any]:
    payload = await json_body(request)
    seconds = payload.get("seconds") if isinstance(payload, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise bad_request('Body must be {"seconds": <number >= 0>}.', param="seconds")
    now = sim.store.clock.advance(float(seconds))
    sim.store.save()
    return {"now": int(now), "advanced_by": seconds}


@router.post("/batches/{batch_id}/complete")
def complete_batch(batch_id: str, sim: SimDep) -> dict[str, Any]:
    return sim.batches.force_complete(batch_id)


@router.post("/batches/{batch_id}/expire")
def expire_batch(batch_id: str, sim: SimDep) -> dict[str, Any]:
    return sim.batches.force_expire(batch_id)


@router.post("/files/{file_id}/expire")
def expire_file(file_id: str, sim: SimDep) -> dict[str, Any]:
    return sim.store.expire_file(file_id).to_api()


@router.get("/stats")
def stats(sim: SimDep) -> dict[str, Any]:
    store = sim.store
    with store.lock:
        now = store.now()
        by_status = Counter(engine.status_at(b, now) for b in store.batches.values())
        live_files = sum(1 for f in store.files.values() if f.visible(now))
        return {
            "now": int(now),
            **store.stats.to_json(),
            "batches_by_status": dict(by_status),
            "files_live": live_files,
        }


@router.post("/reset")
async def reset(sim: SimDep) -> dict[str, Any]:
    await run_in_threadpool(sim.reset)
    return {"reset": True}


@router.get("/faults")
def get_faults(sim: SimDep) -> dict[str, Any]:
    with sim.store.lock:
        return sim.store.faults.model_dump()


@router.put("/faults")
async def put_faults(request: Request, sim: SimDep) -> dict[str, Any]:
    payload = await json_body(request)
    if not isinstance(payload, dict):
        raise bad_request("Body must be a JSON object of fault settings.")
    with sim.store.lock:  # a countdown used meanwhile (drop_response_next) is not undone by this update
        try:
            updated = load_fault_config(sim.store.faults, payload)
        except SimulatorConfigError as exc:
            raise bad_request(str(exc), param=exc.fields[0] if exc.fields else None) from None
        sim.store.faults = updated
        return updated.model_dump()
