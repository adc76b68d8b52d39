"""The intake baseline: a minimal FastAPI + psycopg endpoint doing one INSERT per request.

It skips everything the real route does (validation, token estimate, line building) so the ratio
shows what that work costs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

CREATE = "CREATE TABLE IF NOT EXISTS baseline (id bigserial PRIMARY KEY, custom_id text UNIQUE, body jsonb)"
INSERT = "INSERT INTO baseline (custom_id, body) VALUES (%s, %s)"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=10, open=False)
    await pool.open()
    async with pool.connection() as conn:
        await conn.execute(CREATE)
    app.state.pool = pool
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/api/requests", status_code=202)
async def create(request: Request) -> Response:
    data = await request.json()
    async with app.state.pool.connection() as conn:
        await conn.execute(INSERT, (data["custom_id"], Jsonb(data)))
    return Response(b'{"ok":true}', 202, media_type="application/json")
