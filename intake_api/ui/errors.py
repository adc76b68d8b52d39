"""Errors a browser meets in the UI (a refused form, a batch or request that is not there, a bad link)
as an HTML page with a way back; everything else (``/api/*``, the live fragments the pages poll, the
``/dagster`` proxy, scripts) keeps the JSON error envelope of ``intake_api.errors``.

The handlers wrap the ones ``install_error_handlers`` registered, so the JSON answers stay exactly
theirs; only who asked decides: a page load (GET asking for text/html) or a form post.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from intake_api.errors import ApiError, ApiErrors
from intake_api.ui.render import page

# Paths that are never a page: the API, what pages fetch, and the proxied Dagster UI.
_NOT_PAGES = ("/api/", "/ui/live/", "/ui/static/", "/dagster")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_TITLES = {
    400: "Bad request",
    403: "Refused",
    404: "Not found",
    405: "Not allowed",
    409: "Conflict",
    422: "Invalid link",
    502: "OpenAI did not answer",
    503: "Unavailable",
}

Handler = Callable[[Request, Exception], Awaitable[Response]]


def wants_page(request: Request) -> bool:
    """A browser's page load or form post (not the API, a poller or a script)."""
    if request.url.path.startswith(_NOT_PAGES):
        return False
    if request.method == "GET":
        return "text/html" in request.headers.get("accept", "")
    return request.method == "POST" and request.headers.get("content-type", "").startswith(_FORM_TYPES)


def way_back(request: Request) -> tuple[str, str]:
    """Where the operator came from (the Referer, if it is a page of this site), else the nearest list."""
    referer = urlsplit(request.headers.get("referer", ""))
    same_site = not referer.netloc or referer.netloc == request.url.netloc
    path = request.url.path
    a_page = referer.path.startswith("/") and not referer.path.startswith(("//", *_NOT_PAGES))
    # Not back to the very page that failed to load (a form's page is fine: it loaded).
    if same_site and a_page and (referer.path != path or request.method != "GET"):
        target = referer.path + (f"?{referer.query}" if referer.query else "")
        return target, "Back to the page you came from"
    for prefix, label in (("/batches", "the batches"), ("/requests", "the requests")):
        if path.startswith(prefix) and path != prefix:
            return prefix, f"Back to {label}"
    return "/", "Back to the dashboard"


def _details(exc: Exception) -> tuple[int, str, list[str]]:
    if isinstance(exc, ApiError | ApiErrors):
        return (
            exc.status,
            exc.errors[0].get("code", "") if exc.errors else "",
            [e["detail"] for e in exc.errors],
        )
    if isinstance(exc, RequestValidationError):
        details = [f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors()]
        return 422, "validation_error", details
    if isinstance(exc, StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else ""
        if exc.status_code == 404:
            detail = "There is no page at this address."
        return exc.status_code, "", [detail] if detail else []
    return 500, "", []


async def error_page(request: Request, exc: Exception) -> Response:
    status, code, details = _details(exc)
    target, label = way_back(request)
    ctx = {
        "status": status,
        "heading": _TITLES.get(status, "Something went wrong"),
        "details": details,
        "csrf_failed": code == "csrf_failed",
        "back": target,
        "back_label": label,
    }
    return await page(request, "error.html", ctx, status_code=status)


def install(app: FastAPI) -> None:
    """Wrap the app's handlers of these errors: a page for a browser, their own answer otherwise."""
    for kind in (ApiError, ApiErrors, RequestValidationError, StarletteHTTPException):
        json_handler: Handler = app.exception_handlers[kind]

        async def handler(request: Request, exc: Exception, json_handler: Handler = json_handler) -> Response:
            if wants_page(request):
                return await error_page(request, exc)
            return await json_handler(request, exc)

        app.add_exception_handler(kind, handler)
