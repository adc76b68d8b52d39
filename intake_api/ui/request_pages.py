"""``/requests`` (custom_id substring search, filters, new rows announced without shifting the page)
and ``/requests/{custom_id}`` (payload and result as pretty JSON, every delivery attempt, redeliver)."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from batch_pipeline.admin import dashboard, request_edits
from batch_pipeline.admin import requests as admin
from batch_pipeline.admin.errors import NotRedeliverable, RequestNotFound
from batch_pipeline.intake.endpoints import ENDPOINTS
from batch_pipeline.states import REQUEST_STATES
from intake_api.errors import ApiError
from intake_api.ui.render import back, checked_form, page

router = APIRouter()
PAGE_SIZES = (10, 25, 50, 100)
NEW_ROWS_COUNTED = 100
Opt = Annotated[str | None, Query(max_length=512)]


def _filter(state: str | None, batch_id: str | None, model: str | None, endpoint: str | None,
            q: str | None) -> admin.RequestFilter:  # fmt: skip
    def clean(v: str | None) -> str | None:
        return v.replace("\x00", "") or None if v else None

    return admin.RequestFilter(
        state=state if state in REQUEST_STATES else None,
        batch_id=int(batch_id) if batch_id and batch_id.isdigit() else None,
        model=clean(model),
        url=endpoint if endpoint in ENDPOINTS else None,
        custom_id_contains=clean(q),
    )


@router.get("/requests")
async def requests_page(
    request: Request, state: Opt = None, batch_id: Opt = None, model: Opt = None, endpoint: Opt = None,
    q: Opt = None, limit: int = 25, before: int | None = None,
) -> Response:  # fmt: skip
    flt = _filter(state, batch_id, model, endpoint, q)
    limit = limit if limit in PAGE_SIZES else 25
    async with request.app.state.pool.connection() as conn:
        rows = await admin.list_requests(conn, flt, limit + 1, before)
    has_next, rows = len(rows) > limit, rows[:limit]
    filters = {"state": flt.state, "batch_id": flt.batch_id, "model": flt.model, "endpoint": flt.url,
               "q": flt.custom_id_contains}  # fmt: skip
    base = {k: v for k, v in {**filters, "limit": limit}.items() if v}
    top = rows[0]["id"] if rows and before is None else None
    ctx: dict[str, Any] = {
        "rows": rows, "filters": filters, "base": base, "limit": limit, "sizes": PAGE_SIZES,
        "has_next": has_next, "paged": before is not None, "states": REQUEST_STATES,
        "endpoints": list(ENDPOINTS), "top": top, "quote": quote,
    }  # fmt: skip
    return await page(request, "requests.html", ctx)


@router.get("/ui/live/requests/new")
async def new_requests(
    request: Request, since: int, state: Opt = None, batch_id: Opt = None, model: Opt = None,
    endpoint: Opt = None, q: Opt = None,
) -> JSONResponse:  # fmt: skip
    """How many rows matching the filters arrived after ``since`` (at most NEW_ROWS_COUNTED + 1)."""
    flt = _filter(state, batch_id, model, endpoint, q)
    async with request.app.state.pool.connection() as conn:
        rows = await admin.list_requests(conn, flt, NEW_ROWS_COUNTED + 1, None)
    return JSONResponse(
        {"new": sum(1 for r in rows if r["id"] > since)}, headers={"cache-control": "no-store"}
    )


@router.get("/requests/{custom_id:path}")
async def request_page(request: Request, custom_id: str) -> Response:
    async with request.app.state.pool.connection() as conn:
        try:
            row = await admin.get_request(conn, custom_id)
        except RequestNotFound as exc:
            raise ApiError(404, "not_found", "Request Not Found", str(exc)) from None
        payload = await dashboard.request_payload(conn, row["id"])
    return await page(request, "request.html", {"r": row, "payload": payload, "quote": quote})


@router.post("/requests-redeliver")
async def redeliver(request: Request) -> Response:
    form = await checked_form(request)
    custom_id = form.get("custom_id", "")
    async with request.app.state.pool.connection() as conn:
        try:
            await admin.redeliver_request(conn, custom_id)
            message = f"Redelivery queued for {custom_id}"
        except (RequestNotFound, NotRedeliverable) as exc:
            message = f"Refused: {exc}"
    request.app.state.ui_overview.forget()
    return back("/requests/" + quote(custom_id, safe=""), message)


def _new_config(form: dict[str, str]) -> dict[str, str]:
    if form.get("type") == "rabbitmq":
        return {"type": "rabbitmq", "rabbitmq_queue": form.get("destination", "").strip()}
    return {"type": "webhook", "webhook_url": form.get("destination", "").strip()}


@router.post("/requests-delivery-config")
async def edit_delivery_config(request: Request) -> Response:
    """Where the result goes from now on, checked by the intake's own rules (URL policy included)."""
    form = await checked_form(request)
    custom_id, cfg = form.get("custom_id", ""), _new_config(form)
    target = "/requests/" + quote(custom_id, safe="")
    intake = request.app.state.intake
    async with request.app.state.pool.connection() as conn:
        try:
            row = await admin.get_request(conn, custom_id)
        except RequestNotFound as exc:
            return back("/requests", f"Refused: {exc}")
        line = json.loads(await dashboard.request_payload(conn, row["id"]) or "{}")
        await intake.refresh_limits(conn)
        checked = intake.check({**line, "delivery_config": cfg})
        # Only the new configuration is judged: the stored request passed intake already.
        errors = [
            e for e in getattr(checked, "errors", ()) if e["source"]["pointer"].startswith("/delivery_config")
        ]
        if errors:
            return back(target, "Refused: " + "; ".join(e["detail"] for e in errors))
        await request_edits.update_delivery_config(conn, custom_id, cfg)
    return back(target, "Delivery configuration saved")
