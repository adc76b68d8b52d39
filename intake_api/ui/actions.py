"""Operator actions from the UI: each is a POST with the CSRF token, calls the same admin service as
the API, and redirects back to the page it came from with what happened as a notice."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from batch_pipeline.admin import batches as admin
from batch_pipeline.admin import cancel
from batch_pipeline.admin.errors import BatchNotFound, InvalidBatchState, NotRedeliverable, OpenAICallFailed
from batch_pipeline.states import AT_OPENAI, BEFORE_OPENAI, DELIVERABLE, FINISHED
from intake_api.ui.login import safe_next
from intake_api.ui.render import back, checked_form

router = APIRouter()

# (action, label, confirmation, the states it applies to): what a batch row and page offer.
_ACTIONS_ON_A_BATCH = (
    ("upload", "Upload now", "Check this batch's capacity now?", ("waiting_for_capacity",)),
    ("cancel", "Cancel", "Cancel this batch (at OpenAI too)?", (*BEFORE_OPENAI, AT_OPENAI[0])),
    ("restart", "Restart", "Put this failed batch's undelivered requests back in the queue?", ("failed",)),
    ("redeliver-failed", "Redeliver failed", "Deliver this batch's failed results again?", DELIVERABLE),
    ("redeliver-all", "Redeliver all", "Deliver every result of this batch again?", DELIVERABLE),
    ("delete", "Delete", "Delete this batch with all its requests and results? This cannot be undone.",
     FINISHED),
)  # fmt: skip


def batch_actions(state: str) -> list[tuple[str, str, str]]:
    """The actions that apply to a batch in ``state``: (action, label, confirmation)."""
    return [(a, label, ask) for a, label, ask, states in _ACTIONS_ON_A_BATCH if state in states]


async def _run(request: Request, batch_id: int, action: str) -> str:
    state = request.app.state
    async with state.pool.connection() as conn:
        if action == "upload":
            await admin.upload_waiting(conn, batch_id)
            return f"Batch {batch_id}: capacity check due now"
        if action == "cancel":
            result = await cancel.cancel_batch(conn, state.settings, batch_id)
            return f"Batch {batch_id} is {result['state']}"
        if action == "restart":
            result = await admin.restart_batch(conn, batch_id)
            return f"Batch {batch_id} restarted: {result['requeued_requests']} requests back in the queue"
        if action in ("redeliver-failed", "redeliver-all"):
            result = await admin.redeliver_batch(conn, batch_id, action.removeprefix("redeliver-"))
            return f"Batch {batch_id}: redelivery triggered for {result['requeued']} requests"
        if action == "delete":
            await admin.delete_batch(conn, batch_id)
            return f"Batch {batch_id} deleted"
    return f"Unknown action {action!r}"


@router.post("/batches/{batch_id}/{action}")
async def batch_action(request: Request, batch_id: int, action: str) -> Response:
    form = await checked_form(request)
    target = safe_next(form.get("next") or f"/batches/{batch_id}")
    try:
        message = await _run(request, batch_id, action)
    except (BatchNotFound, InvalidBatchState, NotRedeliverable, OpenAICallFailed) as exc:
        message = f"Refused: {exc}"
    request.app.state.ui_overview.forget()
    if action == "delete" and target.startswith(f"/batches/{batch_id}"):
        target = "/batches"
    return back(target, message)
