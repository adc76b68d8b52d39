"""``/``: the dashboard. Requests and batches per state, batches in flight with OpenAI's progress, the
delivery success rate, intake and deliveries per hour (SVG), cost and savings, RabbitMQ's status."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from batch_pipeline.admin import dashboard as admin
from batch_pipeline.states import EVERY_BATCH_STATE, REQUEST_STATES
from intake_api.ui import services
from intake_api.ui.charts import bar_chart
from intake_api.ui.render import fragment, page

router = APIRouter()


async def _context(request: Request) -> dict[str, Any]:
    state = request.app.state
    overview = await admin.overview(state.pool, state.ui_overview)
    return {
        "o": overview,
        "request_states": REQUEST_STATES,
        "batch_states": EVERY_BATCH_STATE,
        "intake_chart": bar_chart(overview["intake_per_hour"], "requests") if overview else "",
        "delivery_chart": bar_chart(overview["deliveries_per_hour"], "deliveries", "#16a34a")
        if overview
        else "",
        "rabbitmq": await admin.rabbitmq_status(state.settings, state.ui_rabbitmq),
        "usage": await services.usage_totals(request),
    }


@router.get("/")
async def dashboard(request: Request) -> Response:
    return await page(request, "dashboard.html", await _context(request))


@router.get("/ui/live/dashboard")
async def dashboard_live(request: Request) -> Response:
    return fragment(request, "dashboard_live.html", await _context(request))
