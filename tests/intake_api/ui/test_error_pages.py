"""A browser's errors in the UI are pages with a way back; the API and the pollers keep JSON."""

from __future__ import annotations

import re
from pathlib import Path

from tests.intake_api.conftest import serve
from tests.intake_api.ui.helpers import csrf_of, post_form

TOKEN = "ui-token-123"
HTML = {"accept": "text/html,application/xhtml+xml"}


def way_back(text: str) -> str:
    found = re.search(r'id="way-back" href="([^"]*)"', text)
    assert found is not None, text[:2000]
    return found.group(1)


def test_a_refused_form_is_a_page_that_leads_back(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as c:
        csrf_of(c, "/settings")
        base = str(c.base_url).rstrip("/")
        refused = c.post("/settings/intake", data={"action": "pause", "csrf_token": "0" * 64},
                         headers={"referer": f"{base}/settings?tab=limits"})  # fmt: skip
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("text/html")
        assert "nothing was changed" in refused.text and "Refused" in refused.text
        assert way_back(refused.text) == "/settings?tab=limits"
        assert "Intake is PAUSED" not in c.get("/settings").text  # indeed nothing changed
        # Another site's address is never the way back.
        foreign = c.post("/requests-redeliver", data={"custom_id": "a"},
                         headers={"referer": "https://evil.example/x"})  # fmt: skip
        assert foreign.status_code == 403 and way_back(foreign.text) == "/requests"
        # A script posting JSON-ish data keeps the envelope.
        scripted = c.post("/settings/intake", json={"action": "pause"})
        assert scripted.status_code == 403 and scripted.json()["errors"][0]["code"] == "csrf_failed"


def test_missing_batch_request_and_page_are_pages_for_a_browser(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as c:
        for path, back, words in (
            ("/batches/999999", "/batches", "999999"),
            ("/requests/no-such-id", "/requests", "no-such-id"),
            ("/no-such-page", "/", "There is no page at this address."),
            ("/requests?limit=many", "/", "limit"),
        ):
            page = c.get(path, headers=HTML)
            assert page.status_code in (404, 422), (path, page.status_code)
            assert page.headers["content-type"].startswith("text/html"), path
            assert words in page.text and way_back(page.text) == back, path
            assert "<nav>" in page.text  # the whole UI around it, not a bare message
        # Without asking for HTML (curl, the pages' pollers) the same answers stay JSON.
        assert c.get("/batches/999999").json()["errors"][0]["code"] == "not_found"
        assert c.get("/api/batches/999999", headers=HTML).json()["errors"][0]["code"] == "not_found"
        assert (
            c.get("/ui/live/batches/999999", headers=HTML)
            .headers["content-type"]
            .startswith("application/json")
        )


def test_a_form_posted_after_the_login_expired_goes_to_the_login_and_back(
    tmp_path: Path, db_url: str
) -> None:
    with serve(tmp_path, db_url, api_token=TOKEN) as c:
        post_form(c, "/login", {"token": TOKEN, "next": "/"}, page="/login")
        csrf = csrf_of(c, "/settings")
        c.cookies.clear()  # the session cookie expired (the browser drops it after Max-Age)
        base = str(c.base_url).rstrip("/")
        stale = c.post("/settings/intake", data={"action": "pause", "csrf_token": csrf},
                       headers={"referer": f"{base}/settings"})  # fmt: skip
        assert stale.status_code == 303
        assert stale.headers["location"] == "/login?next=%2Fsettings&expired=1"
        login = c.get(stale.headers["location"])
        assert login.status_code == 200 and 'id="login-expired"' in login.text
        assert 'name="next" value="/settings"' in login.text
        # The API and pollers still get a 401 envelope, no redirect.
        assert c.post("/api/intake/pause").status_code == 401
        assert c.get("/ui/live/dashboard").status_code == 401
