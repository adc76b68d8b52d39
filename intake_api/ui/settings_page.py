"""``/settings``: per-model queue token limits (add, change, reset) and intake pause/resume."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from batch_pipeline.admin import model_limits as admin
from intake_api.ui import services
from intake_api.ui.render import back, checked_form, page

router = APIRouter()
MAX_PREFIX = 256


@router.get("/settings")
async def settings_page(request: Request) -> Response:
    async with request.app.state.pool.connection() as conn:
        limits = await admin.model_limits(conn)
    return await page(request, "settings.html", {"limits": limits})


def _limit(text: str) -> int | None:
    digits = text.replace(",", "").replace("_", "").replace(" ", "")
    return int(digits) if digits.isdigit() and 0 < int(digits) < 2**63 else None


@router.post("/settings/model-limits")
async def put_limit(request: Request) -> Response:
    form = await checked_form(request)
    prefix, limit = form.get("model_prefix", "").strip(), _limit(form.get("token_limit", ""))
    if not prefix or len(prefix) > MAX_PREFIX or "\x00" in prefix or limit is None:
        return back("/settings", "Refused: give a model prefix and a positive whole number of tokens")
    async with request.app.state.pool.connection() as conn:
        await admin.put_model_limit(conn, prefix, limit)
    request.app.state.intake.invalidate_limits()
    return back("/settings", f"Token limit for {prefix} set to {limit:,}")


@router.post("/settings/model-limits/reset")
async def reset_limit(request: Request) -> Response:
    form = await checked_form(request)
    prefix = form.get("model_prefix", "")
    async with request.app.state.pool.connection() as conn:
        found = await admin.delete_model_limit(conn, prefix)
    request.app.state.intake.invalidate_limits()
    return back("/settings", f"Override for {prefix} removed" if found else f"No override for {prefix}")


@router.post("/settings/intake")
async def intake(request: Request) -> Response:
    form = await checked_form(request)
    pause = form.get("action") == "pause"
    await services.set_paused(request, pause)
    return back("/settings", "Intake paused" if pause else "Intake resumed")
