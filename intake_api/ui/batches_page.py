"""``/batches``: filters (state, endpoint, model), search, order, keyset pages, live rows, row actions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from batch_pipeline.admin import dashboard as admin
from batch_pipeline.intake.endpoints import ENDPOINTS
from batch_pipeline.states import EVERY_BATCH_STATE
from intake_api.ui.actions import batch_actions
from intake_api.ui.render import fragment, page

router = APIRouter()
PAGE_SIZES = (10, 20, 25, 50, 100)
OPPOSITE = {"newest": "oldest", "oldest": "newest"}


def _opt(value: str | None) -> str | None:
    """An empty form field means "any"; NUL cannot be stored, so it cannot match either."""
    return value.replace("\x00", "") or None if value else None


async def _context(request: Request, p: dict[str, Any]) -> dict[str, Any]:
    order = p["sort"] if p["sort"] in OPPOSITE else "newest"
    limit = p["limit"] if p["limit"] in PAGE_SIZES else 20
    flt = {"state": p["state"] if p["state"] in EVERY_BATCH_STATE else None, "model": _opt(p["model"]),
           "endpoint": _opt(p["endpoint"]), "search": _opt(p["q"])}  # fmt: skip
    async with request.app.state.pool.connection() as conn:
        if p["before"] is not None:  # the previous page: read backwards from its first row
            rows, total = await admin.batch_page(conn, flt, OPPOSITE[order], limit + 1, p["before"])
            has_prev, rows = len(rows) > limit, rows[:limit][::-1]
            has_next = True
        else:
            rows, total = await admin.batch_page(conn, flt, order, limit + 1, p["after"])
            has_next, rows = len(rows) > limit, rows[:limit]
            has_prev = p["after"] is not None
    base = {k: v for k, v in {**flt, "q": flt.pop("search"), "sort": order, "limit": limit}.items() if v}
    return {
        "rows": rows, "total": total, "limit": limit, "sort": order, "filters": p, "base": base,
        "has_next": has_next and bool(rows), "has_prev": has_prev and bool(rows),
        "states": EVERY_BATCH_STATE, "endpoints": list(ENDPOINTS), "sizes": PAGE_SIZES,
        "actions": batch_actions,
    }  # fmt: skip


def _params(
    state: str | None, model: str | None, endpoint: str | None, q: str | None, sort: str, limit: int,
    after: int | None, before: int | None,
) -> dict[str, Any]:  # fmt: skip
    return {"state": state, "model": model, "endpoint": endpoint, "q": q, "sort": sort, "limit": limit,
            "after": after, "before": before}  # fmt: skip


Opt = Annotated[str | None, Query(max_length=256)]


@router.get("/batches")
async def batches(
    request: Request, state: Opt = None, model: Opt = None, endpoint: Opt = None, q: Opt = None,
    sort: str = "newest", limit: int = 20, after: int | None = None, before: int | None = None,
) -> Response:  # fmt: skip
    ctx = await _context(request, _params(state, model, endpoint, q, sort, limit, after, before))
    return await page(request, "batches.html", ctx)


@router.get("/ui/live/batches")
async def batches_live(
    request: Request, state: Opt = None, model: Opt = None, endpoint: Opt = None, q: Opt = None,
    sort: str = "newest", limit: int = 20, after: int | None = None, before: int | None = None,
) -> Response:  # fmt: skip
    ctx = await _context(request, _params(state, model, endpoint, q, sort, limit, after, before))
    return fragment(request, "batches_rows.html", ctx)
