"""The operator UI in a real browser against a real API server, Postgres and the OpenAI simulator.

Each check reads what the page shows after the action. One server (with API_TOKEN, so the login is
exercised) and one logged-in browser page serve the module; each test seeds the rows it acts on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from batch_pipeline.simulator.app import create_app as create_simulator
from batch_pipeline.simulator.settings import SimulatorSettings
from tests.batch_pipeline.admin.helpers import add_batch, add_requests, query
from tests.conftest import ServerThread, make_settings
from tests.intake_api.conftest import database_url, valid_request

TOKEN = "ui-browser-test-token"
TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Stack:
    url: str
    db_url: str
    simulator_url: str


@pytest.fixture(scope="module")
def stack(pg_server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from intake_api.main import create_app

    name = f"batchman_ui_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    db_url = database_url(pg_server_url, name)
    sim_settings = SimulatorSettings(
        _env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", data_dir=tmp_path_factory.mktemp("sim"),
        freeze_clock=True,
    )  # fmt: skip
    try:
        with ServerThread(create_simulator(sim_settings)) as sim:
            settings = make_settings(
                Path(tmp_path_factory.mktemp("ui")), database_url=db_url, api_token=TOKEN,
                openai_base_url=f"{sim.url}/v1",
            )  # fmt: skip
            with ServerThread(create_app(settings, database_url=db_url)) as api:
                yield Stack(api.url, db_url, sim.url)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def log_in(page, base: str) -> None:
    page.goto(f"{base}/")
    page.wait_for_url("**/login?next=*")
    page.fill("input[name=token]", TOKEN)
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{base}/")


@pytest.fixture(scope="module")
def page(browser, stack: Stack) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # every confirmation is answered "OK"
    log_in(page, stack.url)
    yield page
    context.close()


def shot(page, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def submit(stack: Stack, count: int, prefix: str) -> list[str]:
    """Requests through the real intake API."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    with httpx.Client(base_url=stack.url, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        for cid in ids:
            assert client.post("/api/requests", json=valid_request(cid)).status_code == 202
    return ids


def flash(page) -> str:
    return page.locator("#flash").inner_text()


# --- tests --------------------------------------------------------------------------------------------


def test_login_is_asked_once_and_logout_ends_it(browser, stack: Stack, artifacts: Path) -> None:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{stack.url}/batches")
    page.wait_for_url("**/login?next=*")
    page.fill("input[name=token]", "wrong")
    page.click("button:has-text('Log in')")
    assert "Wrong token." in page.locator("p.error").inner_text()
    shot(page, artifacts, "login")
    page.fill("input[name=token]", TOKEN)
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{stack.url}/batches")  # back where the login was asked for
    assert page.locator("h1").inner_text() == "Batches"
    page.goto(f"{stack.url}/settings")  # still logged in: not asked again
    assert page.locator("h1").inner_text() == "Settings"
    page.click("button:has-text('Log out')")
    page.wait_for_url("**/login")
    page.goto(f"{stack.url}/requests")
    page.wait_for_url("**/login?next=*")
    context.close()


def seed_history(db_url: str) -> None:
    """A delivered batch with OpenAI's usage, and a day of arrivals and deliveries, for the charts."""
    ids = add_requests(db_url, 40, state="delivered")
    add_batch(db_url, "delivered", ids, input_tokens=2_400_000, cached_tokens=200_000, output_tokens=900_000)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE batchman.requests SET created_at = now() - (id %% 20) * interval '1 hour'"
            " - (id %% 7) * interval '3 minutes' WHERE id = ANY(%s)",
            (ids,),
        )
        conn.execute(
            "INSERT INTO batchman.delivery_attempts (request_id, delivery_config, outcome, http_status,"
            " attempted_at) SELECT id, delivery_config, CASE WHEN id %% 13 = 0 THEN 'http_status_not_2xx'"
            " ELSE 'success' END, 200, created_at + interval '40 minutes' FROM batchman.requests"
            " WHERE id = ANY(%s)",
            (ids,),
        )


def test_every_page_loads(page, stack: Stack, artifacts: Path) -> None:
    seed_history(stack.db_url)
    cids = submit(stack, 3, "page")
    ids = [
        r["id"]
        for r in query(stack.db_url, "SELECT id FROM batchman.requests WHERE custom_id = ANY(%s)", (cids,))
    ]
    progress = {"openai_batch_id": "batch_pages", "openai_total": 3, "openai_completed": 2}
    batch_id = add_batch(stack.db_url, "openai_processing", ids, estimated_tokens=900, **progress)
    page.goto(f"{stack.url}/")
    assert page.locator("h1").inner_text() == "Dashboard"
    # The counts are cached for a few seconds; the live poll brings the new ones without a reload.
    page.wait_for_function(
        "() => parseInt(document.querySelector('#requests-total').textContent.replace(/,/g, '')) >= 43",
        timeout=30_000,  # a stale count is served while a fresh one is taken: up to two polls
    )
    assert "No API_TOKEN" not in page.content()  # a token is set: no warning
    shot(page, artifacts, "dashboard")
    page.goto(f"{stack.url}/batches")
    assert page.locator(f"tr[data-batch='{batch_id}']").is_visible()
    shot(page, artifacts, "batches")
    page.goto(f"{stack.url}/batches/{batch_id}")
    assert page.locator("#openai-progress").inner_text().strip().startswith("2/3")
    shot(page, artifacts, "batch")
    page.goto(f"{stack.url}/requests")
    assert page.locator("#requests-table").inner_text().count("page-") == 3
    submit(stack, 1, "arrived-later")  # announced by the poller; the rows shown stay where they are
    page.wait_for_selector(".newrows.show", timeout=20_000)
    assert page.locator(".newrows .count").inner_text() == "1"
    assert "arrived-later" not in page.locator("#requests-table").inner_text()
    shot(page, artifacts, "requests")
    page.goto(f"{stack.url}/requests/{cids[0]}")
    assert json.loads(page.locator("#payload-json").inner_text())["custom_id"] == cids[0]
    shot(page, artifacts, "request")
    page.goto(f"{stack.url}/settings")
    assert page.locator("h1").inner_text() == "Settings"
    shot(page, artifacts, "settings")


def test_search_a_request(page, stack: Stack) -> None:
    submit(stack, 2, "needle-xq7")
    submit(stack, 2, "hay")
    page.goto(f"{stack.url}/requests")
    page.fill("#search", "le-xq")
    page.click("button:has-text('Search')")
    table = page.locator("#requests-table tbody").inner_text()
    assert "needle-xq7-0" in table and "needle-xq7-1" in table and "hay-" not in table


def test_open_a_batch_and_cancel_it_at_openai(page, stack: Stack, artifacts: Path) -> None:
    with openai.OpenAI(base_url=f"{stack.simulator_url}/v1", api_key="sk-test", max_retries=0) as sdk:
        ids = add_requests(stack.db_url, 2, model="gpt-4o-mini", state="openai_processing")
        lines = [
            r["payload"]
            for r in query(stack.db_url, "SELECT payload FROM batchman.requests WHERE id = ANY(%s)", (ids,))
        ]
        file = sdk.files.create(file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
        remote = sdk.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    batch_id = add_batch(stack.db_url, "openai_processing", ids, openai_input_file_id=file.id,
                         openai_batch_id=remote.id)  # fmt: skip
    page.goto(f"{stack.url}/batches")
    page.click(f"tr[data-batch='{batch_id}'] a:has-text('#{batch_id}')")
    page.wait_for_url(f"{stack.url}/batches/{batch_id}")
    assert page.locator("h1").inner_text().startswith(f"Batch {batch_id}")
    page.click("#batch-actions button:has-text('Cancel')")
    page.wait_for_url(f"{stack.url}/batches/{batch_id}")
    assert flash(page) == f"Batch {batch_id} is cancelling"
    assert page.locator("#batch-state").inner_text() == "cancelling"
    assert page.locator("#timeline li.current").inner_text().startswith("cancelling")
    shot(page, artifacts, "batch-cancelled")


def test_redeliver_a_request(page, stack: Stack) -> None:
    (cid,) = submit(stack, 1, "redeliver")
    result = {"id": "line-1", "custom_id": cid, "response": {"status_code": 200, "body": {"ok": True}}}
    with psycopg.connect(stack.db_url) as conn:
        conn.execute("UPDATE batchman.requests SET state = 'delivered', result = %s WHERE custom_id = %s",
                     (json.dumps(result), cid))  # fmt: skip
    page.goto(f"{stack.url}/requests/{cid}")
    assert page.locator("#request-state").inner_text() == "delivered"
    assert json.loads(page.locator("#result-json").inner_text())["response"]["body"] == {"ok": True}
    page.click("button:has-text('Redeliver')")
    page.wait_for_url(f"{stack.url}/requests/{cid}")
    assert flash(page) == f"Redelivery queued for {cid}"
    assert page.locator("#request-state").inner_text() == "openai_processed"


def test_change_and_reset_a_token_limit(page, stack: Stack) -> None:
    page.goto(f"{stack.url}/settings")
    page.fill("input[name=model_prefix]", "gpt-4o-mini")
    page.fill("input[name=token_limit]", "1,234,567")
    page.click("button:has-text('Save override')")
    assert flash(page) == "Token limit for gpt-4o-mini set to 1,234,567"
    row = page.locator("#overrides tr[data-prefix='gpt-4o-mini'] .limit")
    assert row.inner_text().startswith("1,234,567")
    page.fill("input[name=model_prefix]", "gpt-4o-mini")
    page.fill("input[name=token_limit]", "2000000")
    page.click("button:has-text('Save override')")
    assert row.inner_text().startswith("2,000,000")
    page.click("#overrides tr[data-prefix='gpt-4o-mini'] button:has-text('Reset')")
    assert flash(page) == "Override for gpt-4o-mini removed"
    assert page.locator("#overrides tr[data-prefix='gpt-4o-mini']").count() == 0


def test_pause_and_resume_intake(page, stack: Stack, artifacts: Path) -> None:
    page.goto(f"{stack.url}/settings")
    page.click("#intake-toggle:has-text('Pause intake')")
    assert flash(page) == "Intake paused"
    page.goto(f"{stack.url}/requests")  # shown on every page
    assert page.locator("#paused-banner").is_visible()
    shot(page, artifacts, "paused")
    with httpx.Client(base_url=stack.url, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        refused = client.post("/api/requests", json=valid_request("while-paused"))
    assert refused.status_code == 503 and refused.json()["errors"][0]["code"] == "maintenance_mode"
    page.goto(f"{stack.url}/settings")
    page.click("#intake-toggle:has-text('Resume intake')")
    assert flash(page) == "Intake resumed"
    assert page.locator("#paused-banner").count() == 0


def test_errors_are_pages_with_a_way_back(page, stack: Stack, artifacts: Path) -> None:
    page.goto(f"{stack.url}/batches/987654")
    assert page.locator("h1").inner_text().startswith("Not found")
    assert "No batch found" in page.locator(".error-page").inner_text()
    shot(page, artifacts, "not-found")
    page.click("#way-back")
    page.wait_for_url(f"{stack.url}/batches")
    # A form whose CSRF token no longer fits the session (as after a log-in elsewhere): refused, and
    # the page says nothing changed and leads back to the form's page.
    page.goto(f"{stack.url}/settings")
    stale = "document.querySelectorAll('input[name=csrf_token]').forEach(i => i.value = '0'.repeat(64))"
    page.evaluate(stale)
    page.click("#intake-toggle:has-text('Pause intake')")
    assert "nothing was changed" in page.locator(".error-page").inner_text()
    shot(page, artifacts, "form-refused")
    page.click("#way-back")
    page.wait_for_url(f"{stack.url}/settings")
    assert page.locator("#paused-banner").count() == 0
