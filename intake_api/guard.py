"""What every request meets before any of its body is read: the API token (or, for the operator UI,
the session cookie) and a size cap.

A pure ASGI middleware, because FastAPI reads and parses a route's declared body before it runs the
route's dependencies: with the token check only in a dependency, a caller without a token could make
the server read and parse megabytes first. Here a missing token is a 401 and an announced body over
the route's cap a 413 before the first body byte is received; a body that turns out larger than it
announced (or a chunked one) is cut off at the cap.

The UI's pages, its live fragments and the ``/dagster`` proxy (HTTP and WebSocket) take the signed
session cookie instead (``intake_api.session``): without a logged-in session a page is redirected to
``/login``, anything else is a 401 (a WebSocket is refused). The decoded session goes on to the app in
``scope["state"]["ui_session"]``; the UI checks each form's CSRF token against it.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batch_pipeline.config import Settings
from intake_api import session as ui_session
from intake_api.errors import envelope_item

# Bodies of the operator routes (batches, settings) are a few hundred bytes.
SMALL_BODY_BYTES = 1024 * 1024
# Routes that check something of their own instead: the OpenAI webhook verifies OpenAI's signature
# (and caps its body), and the API's documentation is public.
OPEN_PATHS = ("/api/openai/webhook", "/api/openapi", "/api/swaggerui")
# Outside /api: what anyone may load without a session (the login form, probes, our CSS and JS).
_PAGES_WITHOUT_LOGIN = ("/login", "/health", "/ui/static/", "/favicon.ico")
# Dagster's own requests go through as they are (its webserver applies its own limits).
_PAGES_WITHOUT_BODY_CAP = ("/dagster",)
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def token_ok(headers: Mapping[str, str], token: str) -> bool:
    """``Authorization: Bearer <token>`` or ``x-api-token: <token>``, compared in constant time."""
    given = headers.get("x-api-token")
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def body_cap(settings: Settings, path: str) -> int:
    if path.rstrip("/") == "/api/requests/bulk":
        return settings.bulk_max_body_bytes
    if path.rstrip("/") == "/api/requests":
        return settings.intake_max_body_bytes
    return SMALL_BODY_BYTES


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not path.startswith("/api/"):
            await self._ui(scope, receive, send, path)
            return
        if path.startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = self.settings.api_token
        if token is not None and not token_ok(headers, token.get_secret_value()):
            await _refuse(send, 401, "unauthorized", "Unauthorized", "A valid API token is required.")
            return
        cap = body_cap(self.settings, path)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            await _refuse(send, 413, *_too_large(cap))
            return
        await _Capped(receive, send, cap).run(self.app, scope)

    async def _ui(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """The session cookie instead of the token; its absence is a redirect to the login page."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = ui_session.signing_key(self.settings)
        found = ui_session.decode(key, ui_session.cookie_from_header(headers.get("cookie", "")))
        scope.setdefault("state", {})["ui_session"] = found
        needs_login = self.settings.api_token is not None and not (found and found.authed)
        if not needs_login or path.startswith(_PAGES_WITHOUT_LOGIN):
            if scope["type"] == "websocket" or path.startswith(_PAGES_WITHOUT_BODY_CAP):
                await self.app(scope, receive, send)
                return
            # The UI's forms are a few hundred bytes; the login form is open to anyone.
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > SMALL_BODY_BYTES:
                await _refuse(send, 413, *_too_large(SMALL_BODY_BYTES))
                return
            await _Capped(receive, send, SMALL_BODY_BYTES).run(self.app, scope)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: a 403 to the client
        elif scope.get("method") == "GET" and "text/html" in headers.get("accept", ""):
            query = scope.get("query_string", b"").decode("latin-1")
            await _to_login(send, path + (f"?{query}" if query else ""))
        elif scope.get("method") == "POST" and headers.get("content-type", "").startswith(_FORM_TYPES):
            # A form posted after the login expired: nothing is done; log in, then back to its page.
            await _to_login(send, _same_site_path(headers.get("referer", "")), expired=True)
        else:
            await _refuse(send, 401, "unauthorized", "Unauthorized", "Log in at /login first.")


async def _to_login(send: Send, target: str, expired: bool = False) -> None:
    location = f"/login?next={quote(target, safe='')}" + ("&expired=1" if expired else "")
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", location.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def _same_site_path(referer: str) -> str:
    """The path (and query) of a Referer on this site, else ``/`` (the login checks it again)."""
    parts = urlsplit(referer)
    if parts.path.startswith("/") and not parts.path.startswith("//"):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return "/"


def _too_large(cap: int) -> tuple[str, str, str]:
    return "payload_too_large", "Payload Too Large", f"The request body exceeds {cap} bytes."


class _Capped:
    """One request whose body is cut off at ``cap``: the app then sees the client gone (as if it had
    hung up) and whatever it answers is replaced by the 413. Raising from ``receive`` instead would
    not do: FastAPI turns any error while it reads a declared body into a 400."""

    def __init__(self, receive: Receive, send: Send, cap: int) -> None:
        self._receive, self._send, self._cap = receive, send, cap
        self._seen, self._exceeded, self._answered = 0, False, False

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        await app(scope, self.receive, self.send)
        if self._exceeded and not self._answered:
            await self._answer()

    async def receive(self) -> Message:
        if self._exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._cap:
                self._exceeded = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if not self._exceeded:
            await self._send(message)
        elif not self._answered:
            await self._answer()

    async def _answer(self) -> None:
        self._answered = True
        await _refuse(self._send, 413, *_too_large(self._cap))


async def _refuse(send: Send, status: int, code: str, title: str, detail: str) -> None:
    body = orjson.dumps({"errors": [envelope_item(code, title, detail)]})
    # The body is never read: ask the client to close, so it does not send it on this connection.
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
