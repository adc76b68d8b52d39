"""``/login`` and ``/logout``: the API token asked once, then a signed session cookie (``session``)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from intake_api import session as sess
from intake_api.ui.render import checked_form, page, set_session

router = APIRouter()


def safe_next(target: str | None) -> str:
    """Only a path on this site (never ``//host`` or a scheme): no open redirect through the login."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@router.get("/login")
async def login_form(request: Request, next: str = "/", expired: str | None = None) -> Response:
    if request.app.state.settings.api_token is None:
        return RedirectResponse(safe_next(next), status_code=303)
    ctx = {"next": safe_next(next), "error": None, "expired": expired is not None}
    return await page(request, "login.html", ctx)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await checked_form(request)
    target = safe_next(form.get("next"))
    token = request.app.state.settings.api_token
    if token is None:
        return RedirectResponse(target, status_code=303)
    given = form.get("token", "")
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        return await page(request, "login.html", {"next": target, "error": "Wrong token."}, status_code=401)
    response = RedirectResponse(target, status_code=303)
    set_session(response, request, sess.new_session(authed=True))  # a new nonce: no session fixation
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await checked_form(request)
    response = RedirectResponse("/login", status_code=303)
    set_session(response, request, sess.new_session(authed=False))
    return response
