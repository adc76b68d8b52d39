"""The operator UI: server-rendered pages at the Elixir service's paths (``/``, ``/batches``,
``/requests``, ``/settings``), the login, and the ``/dagster`` proxy. One router module per page;
templates in ``templates/``, our own small CSS and JS in ``static/`` (no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from batch_pipeline.admin.dashboard import Cache
from batch_pipeline.config import Settings

STATIC_DIR = Path(__file__).parent / "static"


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the pages, the login, the static files and the Dagster proxy on ``app``."""
    from intake_api.ui import (
        actions,
        batch_page,
        batches_page,
        dagster_proxy,
        dashboard,
        errors,
        login,
        request_pages,
        settings_page,
    )

    app.state.ui_overview, app.state.ui_rabbitmq = Cache(), Cache()
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    for module in (login, dashboard, batches_page, batch_page, actions, request_pages, settings_page):
        app.include_router(module.router, include_in_schema=False)
    dagster_proxy.install(app, settings)
    errors.install(app)  # a page with a way back for a browser's errors (after the JSON handlers)
