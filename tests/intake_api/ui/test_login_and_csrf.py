"""The UI's login (session cookie) next to the API's bearer token, and CSRF on every form."""

from __future__ import annotations

from pathlib import Path

from intake_api import session as sess
from tests.intake_api.conftest import serve
from tests.intake_api.ui.helpers import csrf_of, flash, post_form

TOKEN = "ui-token-123"


def test_pages_redirect_to_the_login_and_the_token_logs_in_once(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, api_token=TOKEN) as c:
        page = c.get("/batches?state=ready", headers={"accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Fbatches%3Fstate%3Dready"
        assert c.get("/ui/live/dashboard").status_code == 401  # a poller gets no redirect
        assert c.get("/dagster/").status_code == 401

        wrong = post_form(c, "/login", {"token": "nope", "next": "/batches"}, page="/login")
        assert wrong.status_code == 401 and "Wrong token." in wrong.text
        ok = post_form(c, "/login", {"token": TOKEN, "next": "/batches?state=ready"}, page="/login")
        assert ok.status_code == 303 and ok.headers["location"] == "/batches?state=ready"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert c.get("/batches").status_code == 200
        assert c.get("/ui/live/dashboard").status_code == 200

        out = post_form(c, "/logout", {}, page="/batches")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert c.get("/batches", headers={"accept": "text/html"}).status_code == 303


def test_the_api_keeps_the_bearer_token_and_ignores_the_session(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, api_token=TOKEN) as c:
        post_form(c, "/login", {"token": TOKEN, "next": "/"}, page="/login")
        assert c.get("/batches").status_code == 200  # logged in
        assert c.get("/api/batches").status_code == 401  # the cookie is not a token
        bearer = c.get("/api/batches", headers={"authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200


def test_a_forged_or_foreign_cookie_is_not_a_login(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, api_token=TOKEN) as c:
        other_key = sess.signing_key(type("S", (), {"api_token": None})())  # the no-token key
        c.cookies.set(sess.COOKIE_NAME, sess.encode(other_key, sess.new_session(authed=True)))
        assert c.get("/", headers={"accept": "text/html"}).status_code == 303
        c.cookies.set(sess.COOKIE_NAME, "x.9999999999.1.deadbeef")
        assert c.get("/", headers={"accept": "text/html"}).status_code == 303


def test_the_login_never_redirects_off_site(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, api_token=TOKEN) as c:
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            ok = post_form(c, "/login", {"token": TOKEN, "next": target}, page="/login")
            assert ok.headers["location"] == "/"


def test_every_form_needs_its_csrf_token(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as c:
        csrf_of(c)  # a page sets the session cookie
        for path, data in (
            ("/settings/model-limits", {"model_prefix": "gpt-x", "token_limit": "5"}),
            ("/settings/model-limits/reset", {"model_prefix": "gpt-x"}),
            ("/settings/intake", {"action": "pause"}),
            ("/batches/1/cancel", {}),
            ("/requests-redeliver", {"custom_id": "a"}),
            ("/logout", {}),
        ):
            assert c.post(path, data=data).status_code == 403, path
            assert c.post(path, data={**data, "csrf_token": "0" * 64}).status_code == 403, path
        # Another browser's token does not fit this browser's session.
        with serve(tmp_path, db_url) as other:
            foreign = csrf_of(other)
        refused = c.post("/settings/model-limits", data={"model_prefix": "gpt-x", "token_limit": "5",
                                                         "csrf_token": foreign})  # fmt: skip
        assert refused.status_code == 403
        ok = post_form(c, "/settings/model-limits", {"model_prefix": "gpt-x", "token_limit": "5"})
        assert flash(c, ok) == "Token limit for gpt-x set to 5"


def test_without_api_token_every_page_warns(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as c:
        for path in ("/", "/batches", "/requests", "/settings"):
            page = c.get(path)
            assert page.status_code == 200
            assert "No API_TOKEN is set" in page.text
            assert "SIMULATOR MODE" in page.text  # no OPENAI_API_KEY in the test settings
    with serve(tmp_path, db_url, api_token=TOKEN) as c:
        post_form(c, "/login", {"token": TOKEN, "next": "/"}, page="/login")
        assert "No API_TOKEN is set" not in c.get("/").text


def test_ui_forms_have_the_small_body_cap(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, api_token=TOKEN) as c:
        huge = c.post("/login", content=b"token=" + b"x" * (2 * 1024 * 1024),
                      headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert huge.status_code == 413
