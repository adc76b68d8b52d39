"""Liveness (no dependencies) and readiness (every part the service needs answers)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from batch_pipeline.admin.health import (
    check_postgres,
    daemon_status,
    daemon_status_at,
    openai_refusal,
    rabbitmq_problem,
)
from batch_pipeline.config import Settings, normalize_database_url
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
    responses={503: {"model": Ready, "description": "A dependency is down; each failing check says why"}},
    summary="Readiness: Postgres, OpenAI's view of our key, RabbitMQ (when set) and the Dagster daemon",
)
async def ready(pool: PoolDep, settings: SettingsDep) -> JSONResponse:
    checks: dict[str, str] = {}
    # Each part is checked at once, each within the timeout: the slowest bounds the probe.
    parts = [_database(pool, settings, checks)]
    if settings.rabbitmq_url:
        parts.append(_rabbitmq(settings.rabbitmq_url, checks))
    await asyncio.gather(*parts)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)


async def _database(pool: PoolDep, settings: Settings, checks: dict[str, str]) -> None:
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with pool.connection() as conn:
                await check_postgres(conn)
                checks["postgres"] = "ok"
                # Known from the pipeline's last calls: an upload refused with 401/403 makes its batch
                # wait, and that is what is counted here (no call to OpenAI per readiness probe).
                checks["openai"] = await openai_refusal(conn) or "ok"
                if not settings.dagster_database_url:  # Dagster's tables, if any, are in this database
                    daemon = await daemon_status(conn, settings.ready_daemon_max_age_seconds, required=False)
                    if daemon is not None:
                        checks["dagster_daemon"] = daemon
    except Exception as exc:  # any failure means not ready; the reason is reported, not raised
        checks.setdefault("postgres", f"error: {type(exc).__name__}")
    if settings.dagster_database_url:
        dsn = normalize_database_url(settings.dagster_database_url)
        max_age = settings.ready_daemon_max_age_seconds
        checks["dagster_daemon"] = await daemon_status_at(dsn, max_age, READY_TIMEOUT_SECONDS)


async def _rabbitmq(url: str, checks: dict[str, str]) -> None:
    checks["rabbitmq"] = await rabbitmq_problem(url, READY_TIMEOUT_SECONDS) or "ok"
