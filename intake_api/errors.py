"""The Elixir OpenAI Batch Manager's error envelope, everywhere: this API is compatible with it.

``{"errors": [{code, title, detail, source: {pointer}}]}``: every error the API returns, including
FastAPI's own (404 routes, bad query parameters, wrong methods), goes out in this shape with a 4xx
status; only real faults are 500s.
"""

from __future__ import annotations

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, title: str, detail: str, pointer: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.errors = [envelope_item(code, title, detail, pointer)]


class ApiErrors(Exception):
    """Several errors at once (e.g. every validation failure of one request)."""

    def __init__(self, status: int, errors: list[dict]) -> None:
        super().__init__(errors[0]["detail"] if errors else "")
        self.status = status
        self.errors = errors


def envelope_item(code: str, title: str, detail: str, pointer: str | None = None) -> dict:
    item = {"code": code, "title": title, "detail": detail}
    if pointer is not None:
        item["source"] = {"pointer": pointer}
    return item


def error_response(status: int, errors: list[dict], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=status, headers=headers)


_TITLES = {404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable", 413: "Payload Too Large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    @app.exception_handler(ApiErrors)
    async def _api_error(_: Request, exc: ApiError | ApiErrors) -> JSONResponse:
        return error_response(exc.status, exc.errors)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _: ClientDisconnect) -> Response:
        # The client left before its body was complete: nothing was stored, nobody reads an answer, and
        # it is no server error (unhandled, it was logged as one, with a traceback).
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            envelope_item(
                "validation_error",
                "Invalid value",
                f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}",
                "/" + "/".join(str(p) for p in e["loc"][1:]),
            )
            for e in exc.errors()
        ]
        return error_response(422, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = _TITLES.get(exc.status_code, "Error")
        code = title.lower().replace(" ", "_")
        detail = exc.detail if isinstance(exc.detail, str) else title
        return error_response(
            exc.status_code, [envelope_item(code, title, detail)], getattr(exc, "headers", None)
        )

    @app.exception_handler(psycopg.OperationalError)  # also the pool's PoolTimeout
    async def _database_unavailable(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        # Postgres unreachable (or the pool found no working connection in time): nothing was
        # acknowledged, and the client should come back, not treat it as a fault of its request.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        detail = "The database is unreachable; nothing was confirmed. Please retry shortly."
        return error_response(
            503, [envelope_item("database_unavailable", "Service Unavailable", detail)], {"Retry-After": "5"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            [
                envelope_item(
                    "internal_error",
                    "Internal Server Error",
                    "An error occurred while processing your request. Please try again later.",
                )
            ],
        )
