"""/v1/batches: lifecycle, validation of parameters, cancel, list pagination and result files."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest
from openai.types import Batch

TIMESTAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def _raw_batch(sim: Any, batch_id: str) -> Batch:
    """Fetch the batch as raw JSON and parse it with the SDK's own type."""
    response = sim.get(f"/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    return Batch.model_validate(response.json())


def _set_timestamps(batch: Batch) -> set[str]:
    return {name for name in TIMESTAMPS if getattr(batch, name) is not None}


def test_status_progression_follows_the_clock(sim: Any) -> None:
    client = sim.client()
    batch = sim.submit(sim.chat_lines(4), metadata={"batch_id": "42"})
    assert batch.id.startswith("batch_")
    assert (batch.object, batch.status, batch.completion_window, batch.model) == (
        "batch",
        "validating",
        "24h",
        "gpt-4o-mini",
    )
    assert batch.metadata == {"batch_id": "42"}
    assert batch.expires_at == batch.created_at + 86400
    assert _set_timestamps(batch) == set()
    assert batch.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}

    sim.advance(10)
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress"
    assert running.in_progress_at == batch.created_at + 10
    assert running.request_counts.model_dump() == {"total": 4, "completed": 0, "failed": 0}

    sim.advance(20)  # halfway through the 40 s of in_progress
    assert client.batches.retrieve(batch.id).request_counts.completed == 2

    sim.advance(20)
    finalizing = _raw_batch(sim, batch.id)
    assert finalizing.status == "finalizing"
    assert finalizing.request_counts.completed == 4
    assert finalizing.output_file_id is None
    assert _set_timestamps(finalizing) == {"in_progress_at", "finalizing_at"}

    sim.advance(10)
    done = _raw_batch(sim, batch.id)
    assert done == client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert _set_timestamps(done) == {"in_progress_at", "finalizing_at", "completed_at"}
    assert done.created_at < done.in_progress_at < done.finalizing_at < done.completed_at  # type: ignore[operator]
    assert done.request_counts.model_dump() == {"total": 4, "completed": 4, "failed": 0}
    assert done.error_file_id is None
    output = client.files.retrieve(done.output_file_id)  # type: ignore[arg-type]
    assert (output.purpose, output.created_at) == ("batch_output", done.completed_at)
    lines = sim.read_lines(done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == ["req-0", "req-1", "req-2", "req-3"]
    usage = done.usage
    assert usage is not None
    assert usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in lines)
    assert usage.output_tokens == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in lines
    )
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens > 0


def test_created_batch_parses_with_sdk_types_from_raw_json(sim: Any) -> None:
    file_id = sim.upload(sim.chat_lines(1))

    response = sim.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )

    assert response.status_code == 200
    raw = response.json()
    batch = Batch.model_validate(raw)
    assert batch.input_file_id == file_id
    # The SDK's models accept unknown keys, so a misspelt field would parse: pin the key set too.
    assert set(raw) == set(Batch.model_fields)
    assert raw["errors"] is None and raw["metadata"] is None
    assert set(raw["usage"]) == {
        "input_tokens",
        "input_tokens_details",
        "output_tokens",
        "output_tokens_details",
        "total_tokens",
    }


def _create(sim: Any, **overrides: Any) -> Any:
    body = {"input_file_id": sim.upload(sim.chat_lines(1)), "endpoint": "/v1/chat/completions"}
    body["completion_window"] = "24h"
    body.update(overrides)
    return sim.post("/v1/batches", json={k: v for k, v in body.items() if v is not None})


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"endpoint": "/v1/audio/speech"}, "endpoint"),
        ({"endpoint": None}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"input_file_id": None}, "input_file_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 65),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"metadata": {"sim_fault": "explode"}}, "metadata.sim_fault"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, "output_expires_after.seconds"),
        ({"output_expires_after": {"anchor": "now", "seconds": 3600}}, "output_expires_after.anchor"),
    ],
)
def test_invalid_create_parameters_answer_400(sim: Any, overrides: dict[str, Any], param: str) -> None:
    response = _create(sim, **overrides)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.stats()["batches_created"] == 0


def test_metadata_at_the_limits_is_accepted(sim: Any) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}

    batch = sim.submit(sim.chat_lines(1), metadata=metadata)

    assert batch.metadata == metadata


def test_create_checks_the_input_file(sim: Any) -> None:
    client = sim.client()
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/embeddings", completion_window="24h"
        )
    notes = client.files.create(file=("notes.jsonl", b"x"), purpose="user_data").id

    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=notes, endpoint="/v1/embeddings", completion_window="24h")

    assert caught.value.param == "input_file_id"


def test_invalid_json_body_answers_400(sim: Any) -> None:
    response = sim.post("/v1/batches", content=b"{not json", headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


def test_cancel_in_progress_keeps_partial_results(sim: Any) -> None:
    client = sim.client()
    batch = sim.submit(sim.chat_lines(10))
    sim.advance(10 + 20)  # half of in_progress: 5 of 10 lines executed

    cancelling = client.batches.cancel(batch.id)

    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at == batch.created_at + 30
    assert cancelling.request_counts.model_dump() == {"total": 10, "completed": 5, "failed": 0}
    assert client.batches.cancel(batch.id).status == "cancelling"  # a second cancel is harmless
    sim.advance(9)
    assert client.batches.retrieve(batch.id).request_counts.completed == 5  # nothing runs while cancelling
    sim.advance(1)
    cancelled = _raw_batch(sim, batch.id)
    assert cancelled.status == "cancelled"
    assert cancelled.cancelled_at == batch.created_at + 40
    assert cancelled.request_counts.model_dump() == {"total": 10, "completed": 5, "failed": 5}
    assert [line["custom_id"] for line in sim.read_lines(cancelled.output_file_id)] == [
        f"req-{i}" for i in range(5)
    ]
    errors = sim.read_lines(cancelled.error_file_id)
    assert [line["custom_id"] for line in errors] == [f"req-{i}" for i in range(5, 10)]
    for line in errors:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_cancelled"
    assert cancelled.finalizing_at is None and cancelled.completed_at is None
    assert sim.stats()["cancel_requests"] == 2


def test_cancel_while_validating_runs_nothing(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(3))

    sim.client().batches.cancel(batch.id)
    done = sim.finish(batch.id)

    assert done.status == "cancelled"
    assert done.in_progress_at is None
    assert done.output_file_id is None
    assert done.request_counts.model_dump() == {"total": 3, "completed": 0, "failed": 3}
    assert {line["error"]["code"] for line in sim.read_lines(done.error_file_id)} == {"batch_cancelled"}


def test_cancel_of_a_finished_batch_is_a_conflict(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(1))
    sim.finish(batch.id)

    with pytest.raises(openai.ConflictError) as caught:
        sim.client().batches.cancel(batch.id)

    assert "completed" in caught.value.message
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_unknown_batch_is_404(sim: Any) -> None:
    with pytest.raises(openai.NotFoundError):
        sim.client().batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        sim.client().batches.cancel("batch_missing")


def test_batches_list_is_newest_first_with_cursor_pagination(sim: Any) -> None:
    client = sim.client()
    file_id = sim.upload(sim.chat_lines(1))
    created = []
    for _ in range(25):
        created.append(
            client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
        )
    newest_first = list(reversed(created))

    default_page = sim.get("/v1/batches").json()
    assert len(default_page["data"]) == 20 and default_page["has_more"] is True
    assert default_page["first_id"] == newest_first[0] and default_page["last_id"] == newest_first[19]
    for item in default_page["data"]:
        Batch.model_validate(item)
    page = client.batches.list(limit=10, after=newest_first[9])
    assert [b.id for b in page.data] == newest_first[10:20]
    assert page.has_more is True
    last = client.batches.list(limit=10, after=newest_first[19])
    assert ([b.id for b in last.data], last.has_more) == (newest_first[20:], False)
    assert [b.id for b in client.batches.list(limit=7)] == newest_first  # SDK auto-pagination
    assert client.batches.list(after="batch_unknown").data == []
    for limit in (0, 101):
        assert sim.get("/v1/batches", params={"limit": limit}).status_code == 400


def test_control_complete_finishes_a_batch_now(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(6))

    response = sim.post(f"/_sim/batches/{batch.id}/complete")

    assert response.status_code == 200
    done = Batch.model_validate(response.json())
    assert done.status == "completed"
    assert done.in_progress_at == done.finalizing_at == done.completed_at == batch.created_at
    assert done.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}
    assert len(sim.read_lines(done.output_file_id)) == 6
    assert sim.post(f"/_sim/batches/{batch.id}/complete").status_code == 409
    assert sim.post("/_sim/batches/batch_missing/complete").status_code == 404


def test_output_expires_after_sets_the_result_file_expiry(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(1), output_expires_after={"anchor": "created_at", "seconds": 3600})
    done = sim.finish(batch.id)
    output = sim.client().files.retrieve(done.output_file_id)  # type: ignore[arg-type]

    assert output.expires_at == output.created_at + 3600
    sim.advance(3600)
    with pytest.raises(openai.NotFoundError):
        sim.client().files.content(output.id)


def test_deleting_the_input_file_does_not_lose_the_batch(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(3))
    sim.client().files.delete(batch.input_file_id)

    done = sim.finish(batch.id)

    assert done.status == "completed"
    assert len(sim.read_lines(done.output_file_id)) == 3


def test_result_files_are_generated_once_under_concurrent_reads(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(200))
    sim.advance(100)
    seen: list[tuple[str | None, str | None]] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            got = sim.client().batches.retrieve(batch.id)
            seen.append((got.output_file_id, got.error_file_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(seen)) == 1 and seen[0][0] is not None
    assert [f.purpose for f in sim.client().files.list()].count("batch_output") == 1
    assert len(sim.read_lines(seen[0][0])) == 200


def test_batch_not_done_within_the_completion_window_expires(make_server: Any) -> None:
    server = make_server(completion_window_seconds=30)  # in_progress alone takes 40 s
    batch = server.submit(server.chat_lines(8))
    assert batch.expires_at == batch.created_at + 30

    server.advance(29)
    assert server.client().batches.retrieve(batch.id).status == "in_progress"
    server.advance(1)
    expired = server.client().batches.retrieve(batch.id)

    assert expired.status == "expired"
    assert expired.expired_at == batch.created_at + 30
    assert expired.request_counts.model_dump() == {"total": 8, "completed": 4, "failed": 4}
    assert {line["error"]["code"] for line in server.read_lines(expired.error_file_id)} == {"batch_expired"}
