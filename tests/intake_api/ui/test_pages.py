"""The pages on a real server and database: what they show, their filters and pages, the actions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from intake_api.ui.batch_page import timeline
from tests.batch_pipeline.admin.helpers import add_batch, add_requests, batch, query
from tests.intake_api.conftest import serve, valid_request
from tests.intake_api.ui.helpers import flash, post_form


@pytest.fixture
def ui(tmp_path: Path, db_url: str) -> Iterator[httpx.Client]:
    with serve(tmp_path, db_url) as c:
        yield c


def batch_ids_shown(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'data-batch="(\d+)"', html)]


def pager(html: str) -> list[str]:
    """The cursors of the Previous/Next links."""
    return re.findall(r'<a class="btn" href="/batches\?[^"]*&(before=\d+|after=\d+)">', html)


def test_batches_filter_sort_and_keyset_pages(ui: httpx.Client, db_url: str) -> None:
    ids = [add_batch(db_url, "delivered") for _ in range(5)]
    other = add_batch(db_url, "failed")
    query(db_url, "UPDATE batchman.batches SET model = 'gpt-4.1' WHERE id = %s RETURNING id", (other,))
    first = ui.get("/batches?state=delivered&limit=10&sort=newest")
    assert batch_ids_shown(first.text) == ids[::-1]
    assert "Showing 5 of 5 batches" in first.text
    # Page size 10 is the smallest offered but 2 is not: it falls back to the default.
    page1 = ui.get("/batches?state=delivered&limit=10&sort=oldest")
    assert batch_ids_shown(page1.text) == ids
    assert batch_ids_shown(ui.get(f"/batches?sort=oldest&limit=10&after={ids[1]}").text) == [*ids[2:], other]
    assert batch_ids_shown(ui.get(f"/batches?sort=newest&limit=10&after={ids[3]}").text) == ids[2::-1]
    # Previous page of the newest-first order: the rows just newer than the given one, still newest first.
    assert batch_ids_shown(ui.get(f"/batches?sort=newest&limit=10&before={ids[2]}").text) == [
        other,
        ids[4],
        ids[3],
    ]
    assert batch_ids_shown(ui.get("/batches?q=4.1").text) == [other]  # search in model or endpoint
    assert batch_ids_shown(ui.get("/batches?state=not-a-state").text) == [other, *ids[::-1]]


def test_batches_page_with_more_rows_than_a_page(ui: httpx.Client, db_url: str) -> None:
    ids = [add_batch(db_url, "delivered") for _ in range(12)]
    page1 = ui.get("/batches?limit=10")
    assert batch_ids_shown(page1.text) == ids[:1:-1]
    assert pager(page1.text) == [f"after={ids[2]}"]
    page2 = ui.get(f"/batches?limit=10&after={ids[2]}")
    assert batch_ids_shown(page2.text) == ids[1::-1]
    assert pager(page2.text) == [f"before={ids[1]}"]


def test_row_actions_follow_the_state(ui: httpx.Client, db_url: str) -> None:
    failed = add_batch(db_url, "failed")
    html = ui.get("/batches").text
    row = html[html.index(f'data-batch="{failed}"') :]
    row = row[: row.index("</tr>")]
    assert "Restart" in row and "Delete" in row and "Cancel" not in row


def test_restart_and_delete_from_the_ui(ui: httpx.Client, db_url: str) -> None:
    ids = add_requests(db_url, 2, state="openai_processing")
    failed = add_batch(db_url, "failed", ids)
    done = post_form(ui, f"/batches/{failed}/restart", {"next": f"/batches/{failed}"}, page="/batches")
    assert flash(ui, done) == f"Batch {failed} restarted: 2 requests back in the queue"
    assert batch(db_url, failed)["state"] == "resubmitted"
    deleted = post_form(ui, f"/batches/{failed}/delete", {"next": f"/batches/{failed}"}, page="/batches")
    assert deleted.headers["location"] == "/batches"  # its own page is gone
    assert flash(ui, deleted) == f"Batch {failed} deleted"
    assert batch(db_url, failed) is None
    again = post_form(ui, f"/batches/{failed}/delete", {"next": "/batches"}, page="/batches")
    assert flash(ui, again) == f"Refused: No batch found with id={failed}"


def test_a_refused_action_says_why(ui: httpx.Client, db_url: str) -> None:
    delivered = add_batch(db_url, "delivered")
    refused = post_form(ui, f"/batches/{delivered}/restart", {"next": "/batches"}, page="/batches")
    assert flash(ui, refused).startswith(f"Refused: Batch {delivered} cannot be restarted")


def test_why_waiting_shows_the_capacity_arithmetic(ui: httpx.Client, db_url: str) -> None:
    add_batch(db_url, "openai_processing", estimated_tokens=1_900_000)
    waiting = add_batch(db_url, "waiting_for_capacity", estimated_tokens=300_000,
                        capacity_wait_reason="insufficient_headroom")  # fmt: skip
    post_form(ui, "/settings/model-limits", {"model_prefix": "gpt-4o-mini", "token_limit": "2,000,000"})
    html = ui.get(f"/batches/{waiting}").text
    text = re.sub(r"<[^>]+>", "", html[html.index('id="why-waiting"') :])
    assert (
        "1,900,000 tokens in 1 other batches + this batch's 300,000 = 2,200,000 &gt; the limit 2,000,000"
        in text
    )
    backoff = add_batch(db_url, "waiting_for_capacity", capacity_wait_reason="token_limit_exceeded_backoff",
                        token_limit_retries=2)  # fmt: skip
    assert "backing off, retry 2" in ui.get(f"/batches/{backoff}").text


def test_the_timeline_greys_the_happy_path_ahead() -> None:
    b = {"state": "uploaded", "created_at": 1, "transitions": [
        {"from_state": "ready", "to_state": "uploading", "transitioned_at": 2, "reason": "r"},
        {"from_state": "uploading", "to_state": "uploaded", "transitioned_at": 3, "reason": "r"},
    ]}  # fmt: skip
    steps = timeline(b)
    assert [s["state"] for s in steps if not s["ahead"]] == ["ready", "uploading", "uploaded"]
    assert [s["state"] for s in steps if s["ahead"]] == [
        "openai_processing", "openai_completed", "downloading", "ready_to_deliver", "delivering", "delivered",
    ]  # fmt: skip
    assert [s["state"] for s in steps if s.get("current")] == ["uploaded"]
    b["state"] = "cancelled"
    b["transitions"].append(
        {"from_state": "uploaded", "to_state": "cancelled", "transitioned_at": 4, "reason": "x"}
    )
    steps = timeline(b)
    assert not any(s["ahead"] for s in steps) and steps[-1]["bad"]


def test_requests_search_filters_and_new_rows(ui: httpx.Client, db_url: str) -> None:
    add_requests(db_url, 30)
    html = ui.get("/requests?q=r-2&limit=10").text
    shown = re.findall(r'<a href="/requests/(r-\d+)">', html)
    assert len(shown) == 10 and all("r-2" in cid for cid in shown)  # 11 match: r-2, r-20 .. r-29
    top = query(db_url, "SELECT max(id) AS m FROM batchman.requests")[0]["m"]
    assert ui.get(f"/ui/live/requests/new?since={top}").json() == {"new": 0}
    add_requests(db_url, 3)
    assert ui.get(f"/ui/live/requests/new?since={top}").json() == {"new": 3}
    assert ui.get(f"/ui/live/requests/new?since={top}&state=delivered").json() == {"new": 0}


def test_request_page_and_redeliver(ui: httpx.Client, db_url: str) -> None:
    (rid,) = add_requests(db_url, 1)
    cid = query(db_url, "SELECT custom_id FROM batchman.requests WHERE id = %s", (rid,))[0]["custom_id"]
    page = ui.get(f"/requests/{cid}")
    assert page.status_code == 200 and "No result yet." in page.text
    refused = post_form(ui, "/requests-redeliver", {"custom_id": cid}, page=f"/requests/{cid}")
    assert flash(ui, refused) == "Refused: Request cannot be redelivered: it has no result yet"
    assert ui.get("/requests/no-such-id").status_code == 404


def test_edit_the_delivery_config_with_the_intakes_rules(ui: httpx.Client, db_url: str) -> None:
    (rid,) = add_requests(db_url, 1)
    cfg = '{"type": "webhook", "webhook_url": "http://x/", "headers": {"Authorization": "Bearer s"}}'
    query(db_url, "UPDATE batchman.requests SET delivery_config = %s WHERE id = %s RETURNING id", (cfg, rid))
    cid = query(db_url, "SELECT custom_id FROM batchman.requests WHERE id = %s", (rid,))[0]["custom_id"]

    def edit(kind: str, destination: str) -> str:
        data = {"custom_id": cid, "type": kind, "destination": destination}
        return flash(ui, post_form(ui, "/requests-delivery-config", data, page=f"/requests/{cid}"))

    def stored() -> dict:
        return query(db_url, "SELECT delivery_config FROM batchman.requests WHERE id = %s", (rid,))[0][
            "delivery_config"
        ]

    assert edit("webhook", "ftp://nope") == "Refused: webhook_url must be an http or https URL with a host"
    assert stored()["webhook_url"] == "http://x/"
    assert edit("webhook", "https://new.example/hook") == "Delivery configuration saved"
    assert stored() == {"type": "webhook", "webhook_url": "https://new.example/hook",
                        "headers": {"Authorization": "Bearer s"}}  # fmt: skip
    assert edit("rabbitmq", "results") == "Delivery configuration saved"
    assert stored() == {"type": "rabbitmq", "rabbitmq_queue": "results"}
    assert "results" in ui.get(f"/requests/{cid}").text


def test_pause_and_resume_from_the_settings_page(ui: httpx.Client) -> None:
    paused = post_form(ui, "/settings/intake", {"action": "pause"})
    assert flash(ui, paused) == "Intake paused"
    for path in ("/", "/batches", "/requests", "/settings"):
        assert 'id="paused-banner"' in ui.get(path).text, path
    refused = ui.post("/api/requests", json=valid_request("while-paused"))
    assert refused.status_code == 503 and refused.json()["errors"][0]["code"] == "maintenance_mode"
    resumed = post_form(ui, "/settings/intake", {"action": "resume"})
    assert flash(ui, resumed) == "Intake resumed"
    assert 'id="paused-banner"' not in ui.get("/").text
    assert ui.post("/api/requests", json=valid_request("after-resume")).status_code == 202
