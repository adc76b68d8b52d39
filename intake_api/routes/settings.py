"""``/api/settings/model-limits``: per-model enqueued-token limits (defaults, overrides, fallback).

A change applies to intake at once (its cached copy is dropped) and to the pipeline at its next
sensor tick, which reads the overrides each time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from batch_pipeline.admin import model_limits as admin
from intake_api.deps import ConnDep, require_token
from intake_api.errors import ApiError
from intake_api.schemas import errors_doc
from intake_api.schemas_batches import NO_NUL, ModelLimitInput, ModelLimitOverride, ModelLimits

router = APIRouter(prefix="/api/settings", tags=["settings"], dependencies=[Depends(require_token)])

# ``:path`` so prefixes of fine-tuned model names (``ft:gpt-4o-mini:org::id``) work as they are.
ModelPrefix = Annotated[
    str, Path(min_length=1, max_length=256, pattern=NO_NUL, description="A model name or its prefix")
]


@router.get(
    "/model-limits",
    response_model=ModelLimits,
    responses=errors_doc(401),
    summary="Per-model enqueued-token limits: built-in defaults, overrides and the fallback",
)
async def get_model_limits(conn: ConnDep) -> dict:
    return await admin.model_limits(conn)


@router.put(
    "/model-limits/{model_prefix:path}",
    response_model=ModelLimitOverride,
    responses=errors_doc(401, 422),
    summary="Set the limit for models starting with this prefix (longest matching prefix wins)",
)
async def put_model_limit(
    model_prefix: ModelPrefix, body: ModelLimitInput, conn: ConnDep, request: Request
) -> dict:
    row = await admin.put_model_limit(conn, model_prefix, body.token_limit)
    request.app.state.intake.invalidate_limits()
    return row


@router.delete(
    "/model-limits/{model_prefix:path}",
    status_code=204,
    response_class=Response,
    responses=errors_doc(401, 404),
    summary="Remove an override; the built-in default (or the fallback) applies again",
)
async def delete_model_limit(model_prefix: ModelPrefix, conn: ConnDep, request: Request) -> Response:
    if not await admin.delete_model_limit(conn, model_prefix):
        raise ApiError(
            404, "not_found", "Model Limit Not Found", f"No override for model prefix {model_prefix!r}"
        )
    request.app.state.intake.invalidate_limits()
    return Response(status_code=204)
