"""``/batches/{id}``: the timeline (the happy path ahead greyed), OpenAI ids and progress, estimated vs
reported tokens, cost, "why waiting?", delivery counts, Dagster runs, actions and file downloads."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from batch_pipeline.admin import batches as admin
from batch_pipeline.admin import dashboard
from batch_pipeline.admin.errors import BatchNotFound, FileNotAvailable, OpenAICallFailed
from batch_pipeline.admin.files import download_name
from intake_api.errors import ApiError
from intake_api.ui import services
from intake_api.ui.actions import batch_actions
from intake_api.ui.render import fragment, page

router = APIRouter()

HAPPY_PATH = (
    "ready", "uploading", "uploaded", "openai_processing", "openai_completed", "downloading",
    "ready_to_deliver", "delivering", "delivered",
)  # fmt: skip
BAD_STATES = ("failed", "cancelled", "cancelling", "delivery_failed", "partially_delivered", "resubmitted")
FILE_KINDS = {
    "input": "openai_input_file_id",
    "output": "openai_output_file_id",
    "error": "openai_error_file_id",
}


def _step(state: str, at: object = None, reason: str | None = None, ahead: bool = False) -> dict[str, Any]:
    return {"state": state, "at": at, "reason": reason, "ahead": ahead, "bad": state in BAD_STATES}


def timeline(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Where it started, what happened (each transition, in order), then the happy path not reached yet."""
    moves = batch["transitions"]
    first = moves[0]["from_state"] if moves and moves[0]["from_state"] else None
    steps = [_step(first or batch["state"], batch["created_at"], "created")] if first or not moves else []
    steps += [_step(t["to_state"], t["transitioned_at"], t["reason"]) for t in moves]
    steps[-1]["current"] = True
    # What comes next on the way to 'delivered' (a waiting or cancelling batch rejoins the path).
    rejoin = {"waiting_for_capacity": "openai_processing", "cancelling": "openai_completed"}
    state = batch["state"]
    if state in HAPPY_PATH:
        steps += [_step(s, ahead=True) for s in HAPPY_PATH[HAPPY_PATH.index(state) + 1 :]]
    elif state in rejoin:
        steps += [_step(s, ahead=True) for s in HAPPY_PATH[HAPPY_PATH.index(rejoin[state]) :]]
    return steps


def delivery_bar(counts: dict[str, int], total: int) -> list[tuple[str, str, int, float]]:
    parts = (
        ("delivered", "Delivered", counts.get("delivered", 0) + counts.get("failed", 0)),
        ("queued", "Queued", counts.get("openai_processed", 0)),
        ("delivering", "Delivering", counts.get("delivering", 0)),
        ("failed", "Delivery failed", counts.get("delivery_failed", 0)),
    )
    return [(key, label, n, 100 * n / total if total else 0) for key, label, n in parts]


async def _context(request: Request, batch_id: int) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        try:
            batch = await admin.get_batch(conn, batch_id)
        except BatchNotFound:
            raise ApiError(
                404, "not_found", "Batch Not Found", f"No batch found with id={batch_id}"
            ) from None
        waiting = await dashboard.why_waiting(conn, batch)
    runs = "/dagster/runs?q%5B0%5D=" + quote(f"tag:dagster/partition={batch_id}", safe="")
    return {
        "b": batch,
        "timeline": timeline(batch),
        "waiting": waiting,
        "bar": delivery_bar(batch["request_counts"], batch["request_count"]),
        "actions": batch_actions(batch["state"]),
        "cost": await services.batch_cost(request, batch_id),
        "runs_url": runs,
        "files": {kind: batch.get(column) for kind, column in FILE_KINDS.items()},
    }


@router.get("/batches/{batch_id}")
async def batch_detail(request: Request, batch_id: int) -> Response:
    return await page(request, "batch.html", await _context(request, batch_id))


@router.get("/ui/live/batches/{batch_id}")
async def batch_live(request: Request, batch_id: int) -> Response:
    return fragment(request, "batch_live.html", await _context(request, batch_id))


@router.get("/batches/{batch_id}/files/{kind}")
async def batch_file(request: Request, batch_id: int, kind: str) -> Response:
    """The batch's input, output or error file, streamed through (never held whole in memory)."""
    if kind not in FILE_KINDS:
        raise ApiError(404, "not_found", "File Not Found", "kind must be input, output or error")
    try:
        stream = await services.open_file(request, batch_id, kind)
    except (BatchNotFound, FileNotAvailable) as exc:
        raise ApiError(404, "not_found", "File Not Found", str(exc)) from None
    except OpenAICallFailed as exc:
        raise ApiError(502, "openai_error", "OpenAI Error", str(exc)) from None
    headers = {"content-disposition": f'attachment; filename="{download_name(batch_id, kind)}"'}
    return StreamingResponse(stream, media_type="application/jsonl", headers=headers)
