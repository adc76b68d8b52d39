"""``/api/intake``: pause and resume request intake, and its status.

While paused, ``POST /api/requests`` and ``/api/requests/bulk`` answer 503 ``maintenance_mode`` and the
RabbitMQ consumer leaves messages in its queue. Applies at once in the API process that took the call,
within about a second in the others and in the consumer (``admin.intake_control``).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from batch_pipeline.admin import intake_control as admin
from intake_api.deps import ConnDep, require_token
from intake_api.schemas import errors_doc

router = APIRouter(prefix="/api/intake", tags=["intake"], dependencies=[Depends(require_token)])


class IntakeStatus(BaseModel):
    paused: bool
    changed_at: datetime | None


@router.get("", response_model=IntakeStatus, responses=errors_doc(401), summary="Whether intake is paused")
async def intake_status(conn: ConnDep) -> dict:
    return await admin.status(conn)


@router.post(
    "/pause",
    response_model=IntakeStatus,
    responses=errors_doc(401),
    summary="Pause intake: HTTP answers 503 maintenance_mode, the RabbitMQ consumer stops taking messages",
)
async def pause(conn: ConnDep) -> dict:
    await admin.pause(conn)
    return await admin.status(conn)


@router.post("/resume", response_model=IntakeStatus, responses=errors_doc(401), summary="Resume intake")
async def resume(conn: ConnDep) -> dict:
    await admin.resume(conn)
    return await admin.status(conn)
