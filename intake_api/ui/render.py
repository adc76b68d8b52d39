"""Rendering a page: the Jinja2 environment, its filters, what every page shows (intake paused, no
API_TOKEN, simulator mode), the session cookie, CSRF checks and one-shot notices after an action."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from intake_api import session as sess
from intake_api.errors import ApiError
from intake_api.ui import services

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
FLASH_COOKIE = "batchman_flash"


def human_bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def compact(n: int | float | None) -> str:
    value = float(n or 0)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.0f}"


def ago(ts: datetime | None) -> str:
    if ts is None:
        return "\u2013"
    seconds = int((datetime.now(UTC) - ts).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if abs(seconds) >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def utc(ts: datetime | None) -> str:
    return "\u2013" if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


templates.env.filters.update(human_bytes=human_bytes, compact=compact, ago=ago, utc=utc, pretty=pretty)


def current_session(request: Request) -> tuple[sess.Session, bool]:
    """The request's session (the guard decoded it), or a new one; True when it is new."""
    found = request.scope.get("state", {}).get("ui_session")
    if found is not None:
        return found, False
    return sess.new_session(authed=False), True


def set_session(response: Response, request: Request, session: sess.Session) -> None:
    key = sess.signing_key(request.app.state.settings)
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.headers.append("set-cookie", sess.cookie_header(sess.encode(key, session), secure))


async def page(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    """A full page (or, with ``?fragment=1``, only its live part) with what every page shows."""
    settings = request.app.state.settings
    session, new = current_session(request)
    key = sess.signing_key(settings)
    flash = request.cookies.get(FLASH_COOKIE)
    ctx = {
        "request": request,
        "settings": settings,
        "csrf": sess.csrf_token(key, session),
        "logged_in": session.authed,
        "auth_required": settings.api_token is not None,
        "simulator": settings.simulator_mode,
        "paused": await services.intake_paused(request),
        "flash": unquote(flash) if flash else None,
        "nav": request.url.path,
        **context,
    }
    response = templates.TemplateResponse(request, template, ctx, status_code=status_code)
    if new:
        set_session(response, request, session)
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/")
    response.headers["cache-control"] = "no-store"
    return response


def fragment(request: Request, template: str, context: dict[str, Any]) -> HTMLResponse:
    """A page's live part alone, for the poller (``static/ui.js``); its forms carry the CSRF token."""
    key = sess.signing_key(request.app.state.settings)
    ctx = {"request": request, "csrf": sess.csrf_token(key, current_session(request)[0]), **context}
    response = templates.TemplateResponse(request, template, ctx)
    response.headers["cache-control"] = "no-store"
    return response


def back(url: str, message: str) -> RedirectResponse:
    """After an action: back to the page (POST-redirect-GET) with a one-shot notice."""
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        FLASH_COOKIE, quote(message[:500]), max_age=60, path="/", samesite="lax", httponly=True
    )
    return response


async def checked_form(request: Request) -> dict[str, str]:
    """The posted form, after its CSRF token was checked against the session (else a 403)."""
    form = await request.form()
    key = sess.signing_key(request.app.state.settings)
    found = request.scope.get("state", {}).get("ui_session")
    given = form.get(sess.CSRF_FIELD) or request.headers.get(sess.CSRF_HEADER)
    if not sess.csrf_ok(key, found, given if isinstance(given, str) else None):
        raise ApiError(403, "csrf_failed", "Forbidden", "The form is stale or forged; reload the page.")
    return {k: v for k, v in form.items() if isinstance(v, str)}
