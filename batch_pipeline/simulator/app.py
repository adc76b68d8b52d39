"""The FastAPI application: a local stand-in for OpenAI's Files and Batches API.

``create_app`` wires routes, OpenAI-shaped error handling and fault injection; ``serve`` runs it with
uvicorn. Nothing here talks to api.openai.com.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import routes_batches, routes_control, routes_files
from .context import Simulator
from .errors import OpenAIError, error_body
from .http_faults import FaultMiddleware
from .settings import SimulatorSettings, load_settings

logger = logging.getLogger("batch_pipeline.simulator")


def create_app(settings: SimulatorSettings | None = None) -> FastAPI:
    """Build a simulator app; without ``settings`` they are read from ``SIMULATOR_*`` variables."""
    settings = settings or load_settings()
    sim = Simulator.build(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        logger.info(
            "simulator data dir %s (%s), clock %s",
            sim.store.data_dir,
            "persistent" if sim.store.persist else "not persisted",
            "frozen" if settings.freeze_clock else "wall time",
        )
        yield
        sim.store.close()

    app = FastAPI(
        title="OpenAI Batch API simulator",
        summary="Local Files + Batches API with fault injection. No real OpenAI calls are made.",
        lifespan=lifespan,
        docs_url="/_sim/docs",
        openapi_url="/_sim/openapi.json",
        redoc_url=None,
    )
    app.state.simulator = sim
    app.include_router(routes_files.router)
    app.include_router(routes_batches.router)
    app.include_router(routes_control.router)
    _install_error_handlers(app)
    app.add_middleware(FaultMiddleware, dice=sim.dice)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers bad parameters with 400 and names the parameter; FastAPI's default is a 422.
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")]
        param = ".".join(loc) or None
        message = (
            f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else "Invalid request."
        )
        return JSONResponse(error_body(message, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(message), status_code=exc.status_code, headers=exc.headers)


def banner(host: str, port: int) -> str:
    return f"OpenAI Batch API SIMULATOR on http://{host}:{port} — no real OpenAI calls are made"


def serve(
    host: str = "127.0.0.1",
    port: int = 4010,
    *,
    settings: SimulatorSettings | None = None,
    log_config: dict[str, Any] | Literal["uvicorn"] | None = "uvicorn",
) -> None:
    """Run the simulator with uvicorn until interrupted (blocking). Point clients at ``http://host:port/v1``.

    ``log_config=None``: uvicorn leaves logging as the caller set it up (``batchman simulator``: LOG_FORMAT).
    """
    settings = settings or load_settings()
    app = create_app(settings)
    logging_config: dict[str, Any] = {} if log_config == "uvicorn" else {"log_config": log_config}
    config = uvicorn.Config(app, host=host, port=port, log_level=settings.log_level, **logging_config)
    server = uvicorn.Server(config)  # the Config above has just set up uvicorn's logging (or not)
    logging.getLogger("uvicorn.error").warning(
        "%s (base_url http://%s:%s/v1)", banner(host, port), host, port
    )
    server.run()
