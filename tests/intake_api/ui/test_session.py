"""The session cookie and CSRF tokens: signed, bound to the token, expiring, not forgeable."""

from __future__ import annotations

import time
from pathlib import Path

from intake_api import session as sess
from tests.conftest import make_settings


def test_a_session_round_trips_and_any_change_breaks_it(tmp_path: Path) -> None:
    key = sess.signing_key(make_settings(tmp_path, api_token="t1"))
    s = sess.new_session(authed=True)
    cookie = sess.encode(key, s)
    assert sess.decode(key, cookie) == s
    nonce, expires, authed, sig = cookie.split(".")
    flipped = sig[:-1] + ("1" if sig[-1] == "0" else "0")
    assert sess.decode(key, f"{nonce}.{expires}.{authed}.{flipped}") is None  # signature changed
    assert sess.decode(key, f"{nonce}.{expires}.0.{sig}") is None  # logged-in flag changed
    assert sess.decode(key, f"{nonce}x.{expires}.{authed}.{sig}") is None  # payload changed
    assert sess.decode(key, "") is None and sess.decode(key, "a.b.c") is None


def test_changing_the_api_token_ends_every_session(tmp_path: Path) -> None:
    old = sess.signing_key(make_settings(tmp_path, api_token="t1"))
    new = sess.signing_key(make_settings(tmp_path, api_token="t2"))
    cookie = sess.encode(old, sess.new_session(authed=True))
    assert sess.decode(new, cookie) is None


def test_an_expired_session_is_refused(tmp_path: Path) -> None:
    key = sess.signing_key(make_settings(tmp_path, api_token="t1"))
    expired = sess.Session("n", int(time.time()) - 1, True)
    assert sess.decode(key, sess.encode(key, expired)) is None


def test_csrf_token_is_bound_to_the_session(tmp_path: Path) -> None:
    key = sess.signing_key(make_settings(tmp_path, api_token="t1"))
    a, b = sess.new_session(authed=True), sess.new_session(authed=True)
    assert sess.csrf_ok(key, a, sess.csrf_token(key, a))
    assert not sess.csrf_ok(key, b, sess.csrf_token(key, a))
    assert not sess.csrf_ok(key, a, "") and not sess.csrf_ok(key, None, sess.csrf_token(key, a))


def test_the_cookie_is_httponly_and_samesite_lax() -> None:
    header = sess.cookie_header("v", secure=True)
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" in header
    assert "Secure" not in sess.cookie_header("v", secure=False)
    assert sess.cookie_from_header(f"a=1; {sess.COOKIE_NAME}=xyz; b=2") == "xyz"
