"""FastAPI dependencies as ``Annotated`` aliases: settings, the database pool, the intake service, auth."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

import psycopg
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool

from batch_pipeline.config import Settings
from batch_pipeline.intake.service import IntakeService
from intake_api.errors import ApiError

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
    token = request.app.state.settings.api_token
    if token is None:
        return
    given = request.headers.get("x-api-token")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "Unauthorized", "A valid API token is required.")


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[AsyncConnectionPool, Depends(get_pool)]
ConnDep = Annotated[psycopg.AsyncConnection, Depends(get_conn)]
IntakeDep = Annotated[IntakeService, Depends(get_intake)]
