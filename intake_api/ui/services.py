"""The admin services the pages call beyond the plain reads: intake pause, usage and cost, file streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from batch_pipeline.admin import files, intake_control, usage


async def intake_paused(request: Request) -> bool:
    """Cached by ``intake_control`` for about a second: every page shows it, cheaply."""
    async with request.app.state.pool.connection() as conn:
        return await intake_control.is_paused(conn)


async def set_paused(request: Request, paused: bool) -> None:
    async with request.app.state.pool.connection() as conn:
        await (intake_control.pause if paused else intake_control.resume)(conn)


async def usage_totals(request: Request) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        return await usage.totals(conn)


async def batch_cost(request: Request, batch_id: int) -> dict[str, Any] | None:
    async with request.app.state.pool.connection() as conn:
        return await usage.batch_cost(conn, batch_id)


async def open_file(request: Request, batch_id: int, kind: str) -> AsyncIterator[bytes]:
    """The file's bytes; BatchNotFound, FileNotAvailable or OpenAICallFailed before the first byte."""
    app = request.app
    return await files.open_batch_file(app.state.settings, app.state.pool, batch_id, kind)
