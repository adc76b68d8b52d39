"""The intake API application: ``create_app()`` wires settings, the Postgres pool, routers and docs."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from psycopg_pool import AsyncConnectionPool

import batch_pipeline
from batch_pipeline.admin.metrics import record_openai_calls
from batch_pipeline.config import Settings, get_settings
from batch_pipeline.intake.service import IntakeService
from batch_pipeline.observability.logs import configure_logging
from intake_api.body import prepare_bulk_decoder
from intake_api.errors import install_error_handlers
from intake_api.guard import Guard
from intake_api.request_log import RequestLog
from intake_api.routes import batches, health, intake_control, openai_webhook, requests, usage
from intake_api.routes import settings as settings_routes
from intake_api.routes.metrics import MetricsEndpoint
from intake_api.schemas import RequestInput
from intake_api.ui import install as install_ui

log = logging.getLogger(__name__)

# Models referenced from hand-written request bodies must be added to the OpenAPI components.
EXTRA_SCHEMAS = (RequestInput,)


# Not gc.get_freeze_count() == 0: on Python 3.12 the interpreter has frozen objects of its own at start.
_start_up_frozen = False


def create_app(settings: Settings | None = None, database_url: str | None = None) -> FastAPI:
    """Build the app. ``database_url`` overrides ``settings.database_url`` (e.g. the embedded server)."""
    settings = settings or get_settings()
    configure_logging(settings)  # again in each spawned worker, where nothing configured it
    dsn = database_url or settings.database_url
    if not dsn:
        raise RuntimeError("no database URL: set DATABASE_URL or start through `batchman up`")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            dsn, min_size=1, max_size=settings.db_pool_max_size, open=False, timeout=10, name="intake"
        )
        await pool.open()
        app.state.pool = pool
        record_openai_calls(dsn)  # this worker's OpenAI calls (file downloads, cancels), for /metrics
        # The bulk array decoder (0.3 s to build at 50,000 items) is made now, not in the first call.
        prepare_bulk_decoder(settings.bulk_max_items)
        global _start_up_frozen
        if not _start_up_frozen:  # once per process (tests start many apps in one)
            _start_up_frozen = True
            # What start-up built (modules, routes, schemas) lives as long as the process. Moved out of
            # the collector's sight, it no longer sets off and slows full collections: one took 50 ms
            # of every 50,000-item bulk call.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title="OpenAI Batch Manager API",
        version=batch_pipeline.__version__,
        openapi_url="/api/openapi",
        docs_url="/api/swaggerui",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.intake = IntakeService(settings)
    install_error_handlers(app)
    # Token and size cap before any body is read (outermost, so nothing runs before it).
    app.add_middleware(Guard, settings=settings)
    # Outside the guard: /metrics checks the token itself (the guard sends non-/api paths to the UI
    # login); outermost, every answer (refusals too) gets its x-request-id and its access log line.
    app.add_middleware(MetricsEndpoint, settings=settings)
    app.add_middleware(RequestLog)
    app.include_router(health.router)
    app.include_router(requests.router)
    app.include_router(batches.router)
    app.include_router(settings_routes.router)
    app.include_router(openai_webhook.router)
    app.include_router(intake_control.router)
    app.include_router(usage.router)
    install_ui(app, settings)  # the operator UI's pages and the /dagster proxy (intake_api/ui/)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, settings: Settings) -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in EXTRA_SCHEMAS:
            generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(generated.pop("$defs", {}))
            components[model.__name__] = generated
        # The document states the limit this server enforces (CUSTOM_ID_MAX_LENGTH), not the default.
        custom_id = components.get("RequestInput", {}).get("properties", {}).get("custom_id")
        if custom_id is not None:
            custom_id["maxLength"] = settings.custom_id_max_length
        # Our error envelope replaces FastAPI's default 422 shape, so drop the unused defaults.
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for path in schema["paths"].values():
            for op in path.values():
                responses = op.setdefault("responses", {})
                if "HTTPValidationError" in str(responses.get("422", {})):
                    if _cannot_fail_validation(op):
                        del responses["422"]  # FastAPI adds one for any parameter, even a plain string
                    else:
                        responses["422"] = _envelope_response("Validation Error")
                # Any route answers 500 (in the envelope) when something it depends on breaks.
                responses.setdefault("500", _envelope_response("Internal Server Error"))
        app.openapi_schema = schema
    return app.openapi_schema


def _envelope_response(description: str) -> dict:
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    return {"description": description, "content": content}


def _cannot_fail_validation(op: dict) -> bool:
    """No body and only unconstrained string path parameters: nothing FastAPI could answer 422 for."""
    params = op.get("parameters", [])
    return "requestBody" not in op and all(
        p.get("in") == "path"
        and set(p.get("schema", {})) <= {"type", "title"}
        and p["schema"].get("type") == "string"
        for p in params
    )
