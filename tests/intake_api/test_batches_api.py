"""``/api/batches`` on the real app, a real Postgres and, for cancel, the OpenAI simulator as OpenAI."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from batch_pipeline.simulator.app import create_app as create_simulator
from batch_pipeline.simulator.settings import SimulatorSettings
from tests.batch_pipeline.admin.helpers import add_batch, add_requests, batch, query, transitions
from tests.conftest import ServerThread
from tests.intake_api.conftest import assert_error, serve, valid_request

CANCELLING_SECONDS = 10


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The OpenAI simulator on a frozen clock: a batch stays in each phase until the test moves time."""
    settings = SimulatorSettings(
        _env_file=None,
        _env_prefix="SIMULATOR_TESTS_IGNORE_",
        data_dir=tmp_path_factory.mktemp("simulator"),
        freeze_clock=True,
        validating_seconds=10,
        in_progress_seconds=40,
        cancelling_seconds=CANCELLING_SECONDS,
    )
    with ServerThread(create_simulator(settings)) as server:
        yield server


@pytest.fixture
def sdk(simulator: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{simulator.url}/v1", api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture
def client(tmp_path: Path, db_url: str, simulator: ServerThread) -> Iterator[httpx.Client]:
    with serve(tmp_path, db_url, openai_base_url=f"{simulator.url}/v1") as c:
        yield c


def submit_at_openai(db_url: str, sdk: openai.OpenAI, count: int = 2) -> tuple[int, str]:
    """Our requests in a batch that really is at the (simulated) OpenAI: file uploaded, batch created."""
    ids = add_requests(db_url, count, state="openai_processing")
    lines = [r["payload"] for r in query(db_url, "SELECT payload FROM batchman.requests ORDER BY id")]
    file = sdk.files.create(file=("in.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    remote = sdk.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch_id = add_batch(
        db_url, "openai_processing", ids, openai_input_file_id=file.id, openai_batch_id=remote.id
    )
    return batch_id, remote.id


def advance(simulator: ServerThread, seconds: float) -> None:
    assert httpx.post(f"{simulator.url}/_sim/advance", json={"seconds": seconds}).status_code == 200


# --- cancel -------------------------------------------------------------------------------------------


def test_cancel_at_openai_then_cancelling(
    client: httpx.Client, db_url: str, sdk: openai.OpenAI, simulator
) -> None:
    batch_id, remote_id = submit_at_openai(db_url, sdk)
    query(db_url, "UPDATE batchman.batches SET next_check_at = now() + interval '1 hour' RETURNING id")

    resp = client.post(f"/api/batches/{batch_id}/cancel")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert {k: body[k] for k in ("id", "state", "previous_state", "cancelled_requests")} == {
        "id": batch_id, "state": "cancelling", "previous_state": "openai_processing", "cancelled_requests": 0
    }  # fmt: skip
    assert sdk.batches.retrieve(remote_id).status == "cancelling"
    advance(simulator, CANCELLING_SECONDS + 1)
    assert sdk.batches.retrieve(remote_id).status == "cancelled"

    # The status sensor checks it at its next tick; the requests wait for the partial results.
    assert query(db_url, "SELECT state, next_check_at <= now() AS due FROM batchman.batches") == [
        {"state": "cancelling", "due": True}
    ]
    assert {r["state"] for r in query(db_url, "SELECT state FROM batchman.requests")} == {"openai_processing"}
    assert transitions(db_url, batch_id) == [
        ("openai_processing", "cancelling", "cancel requested through the API")
    ]

    # Asking again changes nothing and does not call OpenAI again.
    again = client.post(f"/api/batches/{batch_id}/cancel")
    assert again.status_code == 202 and again.json()["state"] == "cancelling"
    assert len(transitions(db_url, batch_id)) == 1


def test_cancel_tolerates_a_batch_openai_does_not_know(client: httpx.Client, db_url: str) -> None:
    batch_id = add_batch(db_url, "openai_processing", add_requests(db_url, 1), openai_batch_id="batch_gone")
    resp = client.post(f"/api/batches/{batch_id}/cancel")
    assert resp.status_code == 202 and resp.json()["state"] == "cancelling"
    assert transitions(db_url, batch_id)[0][2] == "cancel requested through the API (unknown at OpenAI)"


def test_openai_refusing_the_cancel_is_502_and_nothing_changes(
    client: httpx.Client, db_url: str, sdk: openai.OpenAI, simulator
) -> None:
    batch_id, remote_id = submit_at_openai(db_url, sdk)
    assert httpx.post(f"{simulator.url}/_sim/batches/{remote_id}/complete").status_code == 200
    errors = assert_error(client.post(f"/api/batches/{batch_id}/cancel"), 502, "openai_error")
    assert remote_id in errors[0]["detail"] and "409" in errors[0]["detail"]
    assert batch(db_url, batch_id)["state"] == "openai_processing"
    assert transitions(db_url, batch_id) == []


def test_cancel_before_openai_and_the_crash_leftover_at_openai(
    client: httpx.Client, db_url: str, sdk: openai.OpenAI
) -> None:
    waiting = add_batch(db_url, "waiting_for_capacity", add_requests(db_url, 2))
    resp = client.post(f"/api/batches/{waiting}/cancel")
    assert resp.status_code == 202
    assert resp.json() | {"message": ""} == {
        "id": waiting, "state": "cancelled", "previous_state": "waiting_for_capacity",
        "cancelled_requests": 2, "message": "",
    }  # fmt: skip
    # An upload run that crashed right after creating the OpenAI batch left its id on an 'uploading' batch.
    leftover, remote_id = submit_at_openai(db_url, sdk, count=1)
    query(db_url, "UPDATE batchman.batches SET state = 'uploading' WHERE id = %s RETURNING id", (leftover,))
    assert client.post(f"/api/batches/{leftover}/cancel").json()["state"] == "cancelled"
    assert sdk.batches.retrieve(remote_id).status == "cancelling"


def test_cancel_refuses_finished_or_finishing_batches(client: httpx.Client, db_url: str) -> None:
    for state in ("delivered", "failed", "cancelled", "resubmitted", "openai_completed", "ready_to_deliver"):
        batch_id = add_batch(db_url, state)
        assert_error(client.post(f"/api/batches/{batch_id}/cancel"), 409, "invalid_batch_state")
        assert batch(db_url, batch_id)["state"] == state
    assert_error(client.post("/api/batches/999999/cancel"), 404, "not_found")


# --- upload now ---------------------------------------------------------------------------------------


def test_upload_now_cuts_queued_groups(client: httpx.Client, db_url: str) -> None:
    for i in range(3):
        assert client.post("/api/requests", json=valid_request(f"mini-{i}")).status_code == 202
    other = valid_request("big-1", body={"model": "gpt-4.1", "input": "Hi"})
    assert client.post("/api/requests", json=other).status_code == 202

    resp = client.post("/api/batches/upload", json={"endpoint": "/v1/responses", "model": "gpt-4o-mini"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert len(body["batch_ids"]) == 1 and body["batches"][0]["request_count"] == 3
    assert body["batches"][0]["model"] == "gpt-4o-mini"
    assert batch(db_url, body["batch_ids"][0])["state"] == "ready"

    resp = client.post("/api/batches/upload")  # no body: every group
    assert [b["model"] for b in resp.json()["batches"]] == ["gpt-4.1"]
    resp = client.post("/api/batches/upload", json={})
    assert resp.status_code == 202 and resp.json()["batch_ids"] == []
    assert_error(client.post("/api/batches/upload", json={"endpoint": "/v1/nope"}), 422, "validation_error")
    assert_error(client.post("/api/batches/upload", json={"modle": "x"}), 422, "validation_error")
    assert_error(client.post("/api/batches/upload", json={"model": "a\x00b"}), 422, "validation_error")


def test_upload_now_of_a_waiting_batch(client: httpx.Client, db_url: str) -> None:
    waiting = add_batch(db_url, "waiting_for_capacity", next_check_at="2999-01-01T00:00:00Z")
    resp = client.post(f"/api/batches/{waiting}/upload")
    assert resp.status_code == 202 and resp.json()["state"] == "waiting_for_capacity"
    assert query(db_url, "SELECT next_check_at <= now() AS due FROM batchman.batches") == [{"due": True}]
    assert_error(client.post(f"/api/batches/{add_batch(db_url, 'ready')}/upload"), 409, "invalid_batch_state")
    assert_error(client.post("/api/batches/999999/upload"), 404, "not_found")


# --- restart and delete -------------------------------------------------------------------------------


def test_restart_a_failed_batch(client: httpx.Client, db_url: str) -> None:
    ids = add_requests(db_url, 2, state="failed", error_msg="Batch failed")
    failed = add_batch(db_url, "failed", ids, error_msg="token limit retries exhausted")
    resp = client.post(f"/api/batches/{failed}/restart")
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] == "resubmitted" and resp.json()["requeued_requests"] == 2
    rows = query(db_url, "SELECT state, batch_id, error_msg FROM batchman.requests")
    assert rows == [{"state": "pending", "batch_id": None, "error_msg": None}] * 2
    assert_error(client.post(f"/api/batches/{failed}/restart"), 409, "invalid_batch_state")
    assert_error(client.post("/api/batches/999999/restart"), 404, "not_found")


def test_delete_a_finished_batch(client: httpx.Client, db_url: str) -> None:
    done = add_batch(db_url, "partially_delivered", add_requests(db_url, 2, state="delivered"))
    resp = client.delete(f"/api/batches/{done}")
    assert resp.status_code == 204 and resp.content == b""
    assert batch(db_url, done) is None and query(db_url, "SELECT id FROM batchman.requests") == []
    assert_error(client.delete(f"/api/batches/{done}"), 404, "not_found")
    assert_error(client.delete(f"/api/batches/{add_batch(db_url, 'delivering')}"), 409, "invalid_batch_state")


# --- reading ------------------------------------------------------------------------------------------


def test_get_a_batch_with_counts_transitions_ids_and_usage(client: httpx.Client, db_url: str) -> None:
    batch_id = add_batch(
        db_url,
        "delivered",
        [*add_requests(db_url, 2, state="delivered"), *add_requests(db_url, 1, state="delivery_failed")],
        openai_batch_id="batch_abc",
        openai_input_file_id="file-in",
        openai_output_file_id="file-out",
        input_tokens=120,
        output_tokens=45,
        last_openai_error=json.dumps(
            [{"code": "token_limit_exceeded", "message": "m", "line": None, "param": None}]
        ),
    )
    query(
        db_url,
        "INSERT INTO batchman.batch_transitions (batch_id, from_state, to_state, reason) VALUES"
        " (%s, NULL, 'ready', 'stale'), (%s, 'ready', 'uploading', 'run') RETURNING id",
        (batch_id, batch_id),
    )
    resp = client.get(f"/api/batches/{batch_id}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["openai_batch_id"] == "batch_abc" and body["openai_output_file_id"] == "file-out"
    assert (body["input_tokens"], body["output_tokens"], body["cached_tokens"]) == (120, 45, None)
    assert body["last_openai_error"][0]["code"] == "token_limit_exceeded"
    assert body["request_counts"]["delivered"] == 2 and body["request_counts"]["delivery_failed"] == 1
    assert body["request_counts"]["pending"] == 0 and len(body["request_counts"]) == 9
    assert [(t["from_state"], t["to_state"], t["reason"]) for t in body["transitions"]] == [
        (None, "ready", "stale"),
        ("ready", "uploading", "run"),
    ]
    assert_error(client.get("/api/batches/999999"), 404, "not_found")
    assert_error(client.get("/api/batches/abc"), 422, "validation_error")


def test_list_with_filters_and_pages(client: httpx.Client, db_url: str) -> None:
    ids = [add_batch(db_url, "ready" if i < 3 else "delivered") for i in range(5)]
    first = client.get("/api/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == [ids[4], ids[3]] and first["next_cursor"] == ids[3]
    second = client.get("/api/batches", params={"limit": 2, "before": first["next_cursor"]}).json()
    assert [b["id"] for b in second["data"]] == [ids[2], ids[1]]
    last = client.get("/api/batches", params={"limit": 2, "before": second["next_cursor"]}).json()
    assert [b["id"] for b in last["data"]] == [ids[0]] and last["next_cursor"] is None
    ready = client.get("/api/batches", params={"state": "ready", "model": "gpt-4o-mini"}).json()["data"]
    assert [b["id"] for b in ready] == ids[2::-1]
    assert client.get("/api/batches", params={"endpoint": "/v1/embeddings"}).json()["data"] == []
    assert_error(client.get("/api/batches", params={"state": "bogus"}), 422, "validation_error")
    assert_error(client.get("/api/batches", params={"limit": 0}), 422, "validation_error")
    # Postgres text cannot hold U+0000: a client error, never a 500.
    assert_error(client.get("/api/batches", params={"model": "a\x00b"}), 422, "validation_error")


# --- auth and documentation ---------------------------------------------------------------------------


def test_every_status_needs_the_token_and_is_documented(tmp_path: Path, db_url: str) -> None:
    """Drive each batch route through its statuses with API_TOKEN set; the OpenAPI document lists them."""
    observed: dict[tuple[str, str], set[int]] = defaultdict(set)
    auth = {"Authorization": "Bearer s3cret"}
    with serve(tmp_path, db_url, api_token="s3cret", openai_base_url="http://127.0.0.1:9/v1") as c:

        def hit(method: str, template: str, path: str, expect: int, **kw: Any) -> None:
            kw.setdefault("headers", auth)
            resp = c.request(method, path, **kw)
            assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
            observed[(method.lower(), template)].add(resp.status_code)

        one = "/api/batches/{batch_id}"
        done, failed = add_batch(db_url, "delivered"), add_batch(db_url, "failed")
        # Nothing listens on port 9: OpenAI is unreachable.
        unreachable = add_batch(db_url, "openai_processing", openai_batch_id="batch_x")
        waiting = add_batch(db_url, "waiting_for_capacity")
        for path, expect in (("/api/batches", 200), ("/api/batches?limit=0", 422)):
            hit("GET", "/api/batches", path, expect)
        hit("GET", "/api/batches", "/api/batches", 401, headers={})
        for path, expect in (
            (f"/api/batches/{done}", 200),
            ("/api/batches/9999", 404),
            ("/api/batches/x", 422),
        ):
            hit("GET", one, path, expect)
        hit("GET", one, f"/api/batches/{done}", 401, headers={})
        hit("POST", "/api/batches/upload", "/api/batches/upload", 202)
        hit("POST", "/api/batches/upload", "/api/batches/upload", 422, json={"endpoint": 1})
        hit("POST", "/api/batches/upload", "/api/batches/upload", 401, headers={})
        for action, ok_id in (("upload", waiting), ("restart", failed)):
            template = one + "/" + action
            hit("POST", template, f"/api/batches/{ok_id}/{action}", 202)
            hit("POST", template, f"/api/batches/{done}/{action}", 409)
            hit("POST", template, f"/api/batches/9999/{action}", 404)
            hit("POST", template, f"/api/batches/x/{action}", 422)
            hit("POST", template, f"/api/batches/{ok_id}/{action}", 401, headers={})
        cancel = one + "/cancel"
        hit("POST", cancel, f"/api/batches/{add_batch(db_url, 'ready')}/cancel", 202)
        hit("POST", cancel, f"/api/batches/{done}/cancel", 409)
        hit("POST", cancel, "/api/batches/9999/cancel", 404)
        hit("POST", cancel, "/api/batches/x/cancel", 422)
        hit("POST", cancel, f"/api/batches/{unreachable}/cancel", 502)
        hit("POST", cancel, f"/api/batches/{done}/cancel", 401, headers={})
        hit("DELETE", one, f"/api/batches/{waiting}", 409)
        hit("DELETE", one, f"/api/batches/{done}", 401, headers={})
        hit("DELETE", one, f"/api/batches/{done}", 204)
        hit("DELETE", one, f"/api/batches/{done}", 404)
        hit("DELETE", one, "/api/batches/x", 422)
        schema = c.get("/api/openapi").json()

    assert batch(db_url, unreachable)["state"] == "openai_processing"
    assert len(observed) == 7
    for (method, path), statuses in sorted(observed.items()):
        responses = schema["paths"][path][method]["responses"]
        missing = {str(s) for s in statuses} - set(responses)
        assert not missing, (
            f"{method.upper()} {path} answers {sorted(missing)} but documents {sorted(responses)}"
        )
        for status, response in responses.items():
            if status[0] in "45":
                ref = response["content"]["application/json"]["schema"]
                assert ref == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, status)


@pytest.fixture
def own_simulator(tmp_path: Path) -> Iterator[ServerThread]:
    """A simulator of this test's own: batch ids in metadata and fault settings are not shared."""
    settings = SimulatorSettings(
        _env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", data_dir=tmp_path / "sim", freeze_clock=True
    )
    with ServerThread(create_simulator(settings)) as server:
        yield server


ONE_LINE = (
    b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}}\n'
)


def test_cancel_finds_the_batch_a_crashed_create_left_at_openai(
    tmp_path: Path, db_url: str, own_simulator: ServerThread
) -> None:
    """Only the intent was stored ('creating', no id) when the run died; the batch exists at OpenAI."""
    from batch_pipeline import openai_client as oai

    local = add_batch(db_url, "uploaded", add_requests(db_url, 1), openai_status="creating")
    with openai.OpenAI(base_url=f"{own_simulator.url}/v1", api_key="sk-test", max_retries=0) as sdk:
        file = sdk.files.create(file=("in.jsonl", ONE_LINE), purpose="batch")
        remote = oai.create_batch(sdk, local, file.id, "/v1/chat/completions")
        with serve(tmp_path, db_url, openai_base_url=f"{own_simulator.url}/v1") as client:
            resp = client.post(f"/api/batches/{local}/cancel")
        assert resp.status_code == 202 and resp.json()["state"] == "cancelled"
        assert sdk.batches.retrieve(remote.id).status == "cancelling"


def test_a_batch_cancelled_while_its_create_call_is_in_flight_is_cancelled_at_openai(
    tmp_path: Path, db_url: str, own_simulator: ServerThread
) -> None:
    import threading
    import time

    from batch_pipeline.db import connect
    from batch_pipeline.stages.upload import submit_batch

    local = add_batch(db_url, "uploaded", add_requests(db_url, 1))
    with (
        openai.OpenAI(base_url=f"{own_simulator.url}/v1", api_key="sk-test", max_retries=0) as sdk,
        serve(tmp_path, db_url, openai_base_url=f"{own_simulator.url}/v1") as client,
    ):
        file = sdk.files.create(file=("in.jsonl", ONE_LINE), purpose="batch")
        query(db_url, "UPDATE batchman.batches SET openai_input_file_id = %s RETURNING id", (file.id,))
        # The run's calls take two seconds (the API's do not): the cancel lands while the create
        # call is in flight.
        httpx.put(f"{own_simulator.url}/_sim/faults", json={"slow_seconds": 2.0})
        slow = sdk.with_options(default_headers={"x-sim-http-fault": "slow"})
        outcome: list = []
        run = threading.Thread(
            target=lambda: outcome.append(
                submit_batch(lambda: connect(db_url), slow, local, lambda _m: 10**9, 60)
            )
        )
        run.start()
        deadline = time.monotonic() + 30
        while batch(db_url, local)["openai_status"] != "creating" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.post(f"/api/batches/{local}/cancel").json()["state"] == "cancelled"
        run.join(timeout=60)
        (remote,) = sdk.batches.list().data
        assert remote.status in ("cancelling", "cancelled")
        assert outcome[0].outcome == "skipped" and batch(db_url, local)["state"] == "cancelled"
