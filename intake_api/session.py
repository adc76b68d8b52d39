"""The UI's session cookie and CSRF tokens (the API keeps its bearer token: ``guard.token_ok``).

A session is a signed cookie ``<nonce>.<expires>.<authed>.<signature>``: HttpOnly (no script reads it)
and SameSite=Lax (no other site's form or fetch sends it along with a POST). The signing key is derived
from ``API_TOKEN``, so changing the token logs every browser out, and every API process computes the
same key without sharing a file. Without ``API_TOKEN`` nobody logs in; the cookie then only carries the
nonce the CSRF token is bound to, and a constant key is enough: a forged token needs the nonce, which
another site can neither read nor set.

A form's CSRF token is ``HMAC(key, "csrf:" + nonce)``: only a page we served knows it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from batch_pipeline.config import Settings

COOKIE_NAME = "batchman_session"
# An operator logs in once a working day; then the cookie expires and the login page asks again.
_LOGIN_LIFETIME_SECONDS = 12 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    authed: bool


def signing_key(settings: Settings) -> bytes:
    token = settings.api_token.get_secret_value() if settings.api_token is not None else ""
    return hashlib.sha256(b"batchman-ui-session-v1\x00" + token.encode()).digest()


def _sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def new_session(authed: bool) -> Session:
    return Session(secrets.token_urlsafe(18), int(time.time()) + _LOGIN_LIFETIME_SECONDS, authed)


def encode(key: bytes, session: Session) -> str:
    payload = f"{session.nonce}.{session.expires}.{int(session.authed)}"
    return f"{payload}.{_sign(key, payload)}"


def decode(key: bytes, cookie: str | None) -> Session | None:
    """The session in a cookie, or None when it is missing, forged, malformed or expired."""
    if not cookie:
        return None
    parts = cookie.split(".")
    if len(parts) != 4:
        return None
    nonce, expires, authed, signature = parts
    if not hmac.compare_digest(signature, _sign(key, f"{nonce}.{expires}.{authed}")):
        return None
    if not expires.isdigit() or int(expires) < time.time() or authed not in ("0", "1"):
        return None
    return Session(nonce, int(expires), authed == "1")


def csrf_token(key: bytes, session: Session) -> str:
    return _sign(key, "csrf:" + session.nonce)


def csrf_ok(key: bytes, session: Session | None, given: str | None) -> bool:
    return session is not None and bool(given) and hmac.compare_digest(given, csrf_token(key, session))


def cookie_header(value: str, secure: bool, max_age: int = _LOGIN_LIFETIME_SECONDS) -> str:
    """The Set-Cookie value; ``Secure`` when the page came over HTTPS (behind a TLS proxy too)."""
    attrs = [f"{COOKIE_NAME}={value}", "Path=/", "HttpOnly", "SameSite=Lax", f"Max-Age={max_age}"]
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs)


def cookie_from_header(cookie_header_value: str) -> str | None:
    """Our cookie's value out of a raw ``Cookie`` header (the guard sees the ASGI scope, not a Request)."""
    for part in cookie_header_value.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE_NAME:
            return value
    return None
