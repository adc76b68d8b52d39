"""FastAPI dependencies as ``Annotated`` aliases: settings, the database pool, the intake service, auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import psycopg
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from batch_pipeline.config import Settings
from batch_pipeline.intake.service import IntakeService
from intake_api.errors import ApiError
from intake_api.guard import token_ok

# Dependencies are ``async def`` although none awaits: FastAPI runs a plain ``def`` dependency in its
# thread pool, and that hand-off was 15% of the single-request intake's time.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_pool(request: Request) -> AsyncConnectionPool:
    return request.app.state.pool


async def get_conn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    async with request.app.state.pool.connection() as conn:
        yield conn


async def get_intake(request: Request) -> IntakeService:
    return request.app.state.intake


async def require_token(request: Request) -> None:
    """When ``API_TOKEN`` is set, require it as ``Authorization: Bearer <token>`` or ``x-api-token``."""
    # ``guard.Guard`` has already checked it before the body was read; this keeps the requirement
    # visible on each router (and holds should a route be mounted outside the guard).
    token = request.app.state.settings.api_token
    if token is not None and not token_ok(request.headers, token.get_secret_value()):
        raise ApiError(401, "unauthorized", "Unauthorized", "A valid API token is required.")


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[AsyncConnectionPool, Depends(get_pool)]
ConnDep = Annotated[psycopg.AsyncConnection, Depends(get_conn)]
IntakeDep = Annotated[IntakeService, Depends(get_intake)]
