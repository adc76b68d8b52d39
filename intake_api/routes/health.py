"""Liveness (no dependencies) and readiness (the database answers, OpenAI takes our key)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from batch_pipeline.admin.health import check_postgres, openai_refusal
from intake_api.deps import PoolDep, SettingsDep
from intake_api.schemas import Health, Ready

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 3.0


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
async def health(settings: SettingsDep) -> dict:
    return {"status": "ok", "simulator": settings.simulator_mode}


@router.get(
    "/health/ready",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "A dependency is down"}},
    summary="Readiness: Postgres answers, and OpenAI takes our API key",
)
async def ready(pool: PoolDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with pool.connection() as conn:
                await check_postgres(conn)
                checks["postgres"] = "ok"
                # Known from the pipeline's last calls: an upload refused with 401/403 makes its batch
                # wait, and that is what is counted here (no call to OpenAI per readiness probe).
                checks["openai"] = await openai_refusal(conn) or "ok"
    except Exception as exc:  # any failure means not ready; the reason is reported, not raised
        checks.setdefault("postgres", f"error: {type(exc).__name__}")
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)
