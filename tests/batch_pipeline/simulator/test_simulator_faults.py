"""Fault injection: per-line markers and rates, batch-level metadata faults, token limits, HTTP faults."""

from __future__ import annotations

import socket
import time
from typing import Any

import openai
import pytest
from openai.types import Batch

LINE_FAULTS = {
    "bad_request": (400, "invalid_value"),
    "context_length_exceeded": (400, "context_length_exceeded"),
    "rate_limit": (429, "rate_limit_exceeded"),
    "server_error": (500, None),
}


def test_line_markers_fail_single_requests_the_way_openai_reports_them(sim: Any) -> None:
    lines = [sim.chat_line("ok-1"), sim.chat_line("ok-2")]
    lines += [sim.chat_line(f"fault-{name}", x_sim_fault=name) for name in LINE_FAULTS]
    lines.append(sim.chat_line("fault-timeout", x_sim_fault="request_timeout"))

    done = sim.finish(sim.submit(lines).id)

    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 7, "completed": 2, "failed": 5}
    assert [line["custom_id"] for line in sim.read_lines(done.output_file_id)] == ["ok-1", "ok-2"]
    errors = {line["custom_id"]: line for line in sim.read_lines(done.error_file_id)}
    assert set(errors) == {f"fault-{name}" for name in LINE_FAULTS} | {"fault-timeout"}
    for name, (status, code) in LINE_FAULTS.items():
        line = errors[f"fault-{name}"]
        assert line["error"] is None  # an HTTP-level failure keeps the top-level error null
        assert line["response"]["status_code"] == status
        assert line["response"]["request_id"].startswith("req_")
        assert set(line["response"]["body"]["error"]) == {"message", "type", "param", "code"}
        assert line["response"]["body"]["error"]["code"] == code
    timeout = errors["fault-timeout"]
    assert timeout["response"] is None
    assert timeout["error"]["code"] == "request_timeout" and timeout["error"]["message"]


def test_line_fault_rates_are_applied_per_line(sim: Any) -> None:
    sim.set_faults(line_timeout_rate=1.0)
    all_timeouts = sim.finish(sim.submit(sim.chat_lines(5)).id)
    assert all_timeouts.request_counts.model_dump() == {"total": 5, "completed": 0, "failed": 5}
    assert all_timeouts.output_file_id is None  # nothing succeeded: only an error file

    sim.set_faults(line_timeout_rate=0.0, line_server_error_rate=0.5)
    mixed = sim.finish(sim.submit(sim.chat_lines(200)).id)
    failed = mixed.request_counts.failed
    assert 50 <= failed <= 150  # binomial(200, 0.5): outside this band has odds below 1e-12
    statuses = {line["response"]["status_code"] for line in sim.read_lines(mixed.error_file_id)}
    assert statuses == {500}


def _failed_batch(sim: Any, lines: list[dict[str, Any]], **kwargs: Any) -> Batch:
    batch = sim.submit(lines, **kwargs)
    assert batch.status == "validating"
    sim.advance(10)
    failed = Batch.model_validate(sim.get(f"/v1/batches/{batch.id}").json())
    assert failed.status == "failed"
    assert failed.failed_at == batch.created_at + 10
    assert failed.in_progress_at is None and failed.output_file_id is None and failed.error_file_id is None
    assert failed.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
    assert failed.errors is not None and failed.errors.object == "list"
    return failed


def test_validation_failed_from_metadata_and_invalid_lines(sim: Any) -> None:
    generic = _failed_batch(sim, sim.chat_lines(3), metadata={"sim_fault": "validation_failed"})
    assert [(e.code, e.line, e.param) for e in generic.errors.data] == [("invalid_request", 1, "body")]  # type: ignore[union-attr]

    lines = sim.chat_lines(5)
    for index in (1, 3):
        lines[index]["body"]["x_sim_fault"] = "invalid_line"
    marked = _failed_batch(sim, lines)
    assert [(e.code, e.line) for e in marked.errors.data] == [("invalid_request", 2), ("invalid_request", 4)]  # type: ignore[union-attr]


def test_validation_checks_urls_models_and_streaming(sim: Any) -> None:
    wrong_url = sim.chat_lines(3)
    wrong_url[2]["url"] = "/v1/embeddings"
    failed = _failed_batch(sim, wrong_url)
    assert [(e.code, e.line, e.param) for e in failed.errors.data] == [("invalid_url", 3, "url")]  # type: ignore[union-attr]

    mixed = [sim.chat_line("a", model="gpt-4o-mini"), sim.chat_line("b", model="gpt-4o")]
    failed = _failed_batch(sim, mixed)
    assert [(e.line, e.param) for e in failed.errors.data] == [(2, "body.model")]  # type: ignore[union-attr]

    streaming = [sim.chat_line("a", stream=True)]
    failed = _failed_batch(sim, streaming)
    assert [e.code for e in failed.errors.data] == ["streaming_unsupported"]  # type: ignore[union-attr]


def test_embedding_input_limit_fails_validation(make_server: Any) -> None:
    server = make_server(max_embedding_inputs=4)
    body = {"model": "text-embedding-3-small", "input": ["a", "b"]}
    lines = [server.request_line(f"e{i}", "/v1/embeddings", **body) for i in range(3)]

    failed = _failed_batch(server, lines, endpoint="/v1/embeddings")

    assert "6 embedding inputs" in failed.errors.data[0].message  # type: ignore[union-attr,operator]


def test_token_limit_exceeded_from_metadata(sim: Any) -> None:
    failed = _failed_batch(sim, sim.chat_lines(2), metadata={"sim_fault": "token_limit_exceeded"})

    (error,) = failed.errors.data  # type: ignore[union-attr]
    assert (error.code, error.line, error.param) == ("token_limit_exceeded", None, None)
    assert error.message.startswith("Enqueued token limit reached for gpt-4o-mini in organization")  # type: ignore[union-attr]


def test_create_refused_with_token_limit_exceeded_then_accepted(sim: Any) -> None:
    sim.set_faults(create_token_limit_refusals=1)
    file_id = sim.upload(sim.chat_lines(2))
    create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}

    with pytest.raises(openai.BadRequestError) as refused:
        sim.client().batches.create(**create)
    assert refused.value.code == "token_limit_exceeded"
    assert "Enqueued token limit reached for gpt-4o-mini" in refused.value.message
    assert sim.stats()["batches_created"] == 0

    assert sim.client().batches.create(**create).status == "validating"  # the refusals are spent
    assert sim.set_faults()["create_token_limit_refusals"] == 0


def test_per_model_enqueued_token_limit(sim: Any) -> None:
    client = sim.client()
    probe = sim.submit(sim.chat_lines(4))
    sim.post(f"/_sim/batches/{probe.id}/complete")
    tokens = client.batches.retrieve(probe.id).usage.input_tokens  # type: ignore[union-attr]
    sim.set_faults(token_limits={"gpt-4o-mini": int(tokens * 1.5)})

    first = sim.submit(sim.chat_lines(4))
    second = sim.submit(sim.chat_lines(4))  # first + second exceed the limit while first is enqueued
    other_model = sim.submit(sim.chat_lines(4, model="gpt-4o"))
    sim.advance(10)

    assert client.batches.retrieve(first.id).status == "in_progress"
    rejected = client.batches.retrieve(second.id)
    assert rejected.status == "failed"
    (error,) = rejected.errors.data  # type: ignore[union-attr]
    assert error.code == "token_limit_exceeded"
    assert f"Limit: {int(tokens * 1.5):,} enqueued tokens" in (error.message or "")
    assert client.batches.retrieve(other_model.id).status == "in_progress"

    sim.advance(60)  # first completes and frees its tokens
    assert client.batches.retrieve(first.id).status == "completed"
    third = sim.submit(sim.chat_lines(4))
    sim.advance(10)
    assert client.batches.retrieve(third.id).status == "in_progress"

    too_big = sim.submit(sim.chat_lines(8))  # larger than the limit on its own
    sim.advance(10)
    assert client.batches.retrieve(too_big.id).status == "failed"


def test_expire_fault_keeps_the_first_half(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(10), metadata={"sim_fault": "expire"})

    sim.advance(49)
    assert sim.client().batches.retrieve(batch.id).status == "in_progress"
    sim.advance(1)
    expired = Batch.model_validate(sim.get(f"/v1/batches/{batch.id}").json())

    assert expired.status == "expired"
    assert expired.expired_at == batch.created_at + 50
    assert expired.finalizing_at is None and expired.completed_at is None
    assert expired.request_counts.model_dump() == {"total": 10, "completed": 5, "failed": 5}
    assert [x["custom_id"] for x in sim.read_lines(expired.output_file_id)] == [f"req-{i}" for i in range(5)]
    errors = sim.read_lines(expired.error_file_id)
    assert [x["custom_id"] for x in errors] == [f"req-{i}" for i in range(5, 10)]
    assert all(x["response"] is None and x["error"]["code"] == "batch_expired" for x in errors)


def test_expire_batch_line_marker_expires_the_batch_like_the_metadata_fault(sim: Any) -> None:
    # For a client that cannot set metadata (our pipeline): one marked line expires its whole batch.
    lines = sim.chat_lines(6)
    lines[0]["body"]["x_sim_fault"] = "expire_batch"
    batch = sim.submit(lines)
    sim.advance(50)
    expired = sim.client().batches.retrieve(batch.id)

    assert expired.status == "expired"
    assert expired.request_counts.model_dump() == {"total": 6, "completed": 3, "failed": 3}
    assert [x["custom_id"] for x in sim.read_lines(expired.output_file_id)] == ["req-0", "req-1", "req-2"]
    unmarked = sim.submit(sim.chat_lines(6))
    sim.advance(60)
    assert sim.client().batches.retrieve(unmarked.id).status == "completed"


def test_cancel_midway_fault_cancels_itself(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(8), metadata={"sim_fault": "cancel_midway"})

    sim.advance(30)  # validating (10) + half of in_progress (20)
    cancelling = sim.client().batches.retrieve(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at == batch.created_at + 30
    sim.advance(10)
    cancelled = sim.client().batches.retrieve(batch.id)

    assert cancelled.status == "cancelled"
    assert cancelled.request_counts.model_dump() == {"total": 8, "completed": 4, "failed": 4}
    assert {x["error"]["code"] for x in sim.read_lines(cancelled.error_file_id)} == {"batch_cancelled"}
    assert sim.stats()["cancel_requests"] == 0  # nobody called cancel


def test_control_expire_mid_progress(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(4))
    sim.advance(20)  # a quarter of in_progress: 1 line done

    expired = Batch.model_validate(sim.post(f"/_sim/batches/{batch.id}/expire").json())

    assert expired.status == "expired"
    assert expired.request_counts.model_dump() == {"total": 4, "completed": 1, "failed": 3}
    assert sim.post(f"/_sim/batches/{batch.id}/expire").status_code == 409


def test_http_429_carries_retry_after_and_the_sdk_honours_it(sim: Any) -> None:
    sim.set_faults(retry_after_seconds=7)
    with pytest.raises(openai.RateLimitError) as caught:
        sim.client().batches.list(extra_headers={"x-sim-http-fault": "429"})
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["x-request-id"].startswith("req_")

    sim.set_faults(http_429_rate=1.0, retry_after_seconds=1)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        sim.client(max_retries=1).files.list()
    # Without the header the SDK would back off about 0.5 s; waiting a full second shows it obeyed.
    assert 0.95 <= time.monotonic() - started < 5
    assert sim.stats()["http_faults"]["429"] == 3  # the forced one + 1 attempt + 1 retry


@pytest.mark.parametrize(
    ("fault", "error_type"), [("500", openai.InternalServerError), ("503", openai.APIStatusError)]
)
def test_http_5xx_faults(sim: Any, fault: str, error_type: type[Exception]) -> None:
    with pytest.raises(error_type) as caught:
        sim.client().files.list(extra_headers={"x-sim-http-fault": fault})

    assert caught.value.status_code == int(fault)  # type: ignore[attr-defined]
    assert caught.value.body["type"] == "server_error"  # type: ignore[attr-defined]


def test_http_fault_rates_are_seeded_and_deterministic(make_server: Any) -> None:
    patterns = []
    for _ in range(2):
        server = make_server(http_500_rate=0.3, http_503_rate=0.2, seed=123)
        statuses = [server.get("/v1/files").status_code for _ in range(30)]
        patterns.append(statuses)
        assert {200, 500, 503} == set(statuses)

    assert patterns[0] == patterns[1]


def test_slow_responses(sim: Any) -> None:
    sim.set_faults(slow_seconds=0.4)
    started = time.monotonic()
    assert sim.client().files.list(extra_headers={"x-sim-http-fault": "slow"}).data == []
    assert time.monotonic() - started >= 0.4

    with pytest.raises(openai.APITimeoutError):
        sim.client(timeout=0.1).files.list(extra_headers={"x-sim-http-fault": "slow"})
    sim.set_faults(slow_rate=1.0, slow_seconds=0.2)
    started = time.monotonic()
    sim.client().files.list()
    assert time.monotonic() - started >= 0.2
    assert sim.stats()["http_faults"]["slow"] == 3


def test_dropped_connections(sim: Any) -> None:
    with pytest.raises(openai.APIConnectionError):
        sim.client().files.list(extra_headers={"x-sim-http-fault": "drop"})

    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as raw:
        raw.sendall(
            b"GET /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nx-sim-http-fault: drop\r\n\r\n"
        )
        assert raw.recv(1024) == b""  # closed without a single response byte

    sim.set_faults(drop_rate=1.0)
    with pytest.raises(openai.APIConnectionError):
        sim.client().batches.list()
    with pytest.raises(openai.APIConnectionError):
        sim.submit(sim.chat_lines(1))
    assert sim.stats()["batches_created"] == 0
    assert sim.stats()["http_faults"]["drop"] == 4


def test_control_surface_is_never_faulted(sim: Any) -> None:
    sim.set_faults(drop_rate=0.5, http_500_rate=0.5, slow_rate=1.0, slow_seconds=5)

    started = time.monotonic()
    for _ in range(10):
        assert sim.get("/_sim/stats").status_code == 200
    assert time.monotonic() - started < 4  # a single slow fault would take 5 s


def _our_batches(sim: Any) -> list[Batch]:
    return list(sim.client().batches.list(limit=100).data)


def test_drop_response_next_runs_each_call_then_loses_its_answer(sim: Any) -> None:
    client = sim.client()
    assert sim.get("/_sim/faults").json()["drop_response_next"] == {
        "files.create": 0,
        "batches.create": 0,
        "batches.cancel": 0,
    }

    sim.set_faults(drop_response_next={"files.create": 1})
    with pytest.raises(openai.APIConnectionError) as lost_upload:
        client.files.create(file=("in.jsonl", sim.jsonl(sim.chat_lines(2))), purpose="batch")
    assert not isinstance(lost_upload.value, openai.APITimeoutError)  # a hang-up, not a slow answer
    (stored,) = client.files.list(purpose="batch").data  # the upload happened all the same
    assert stored.filename == "in.jsonl" and stored.bytes > 0
    assert sim.get("/_sim/faults").json()["drop_response_next"]["files.create"] == 0

    sim.set_faults(drop_response_next={"batches.create": 2})
    create = {"input_file_id": stored.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with pytest.raises(openai.APIConnectionError):
        client.batches.create(**create, metadata={"batch_id": "lost"})
    assert sim.get("/_sim/faults").json()["drop_response_next"]["batches.create"] == 1
    (created,) = _our_batches(sim)
    assert created.metadata == {"batch_id": "lost"} and created.status == "validating"
    with pytest.raises(openai.APIConnectionError):
        client.batches.create(**create, metadata={"batch_id": "lost again"})
    assert sim.get("/_sim/faults").json()["drop_response_next"]["batches.create"] == 0
    heard = client.batches.create(**create, metadata={"batch_id": "heard"})  # the count is spent
    assert [b.metadata["batch_id"] for b in _our_batches(sim)] == ["heard", "lost again", "lost"]  # type: ignore[index]

    sim.set_faults(drop_response_next={"batches.cancel": 1})
    with pytest.raises(openai.APIConnectionError):
        client.batches.cancel(heard.id)
    assert client.batches.retrieve(heard.id).status == "cancelling"  # the cancel took effect
    assert client.batches.cancel(heard.id).status == "cancelling"  # the next call is answered

    stats = sim.stats()
    assert (stats["files_uploaded"], stats["batches_created"], stats["cancel_requests"]) == (1, 3, 2)
    assert stats["http_faults"] == {"drop_after": 4}
    assert sim.get("/_sim/faults").json()["drop_response_next"] == {
        "files.create": 0,
        "batches.create": 0,
        "batches.cancel": 0,
    }


def test_drop_response_next_only_counts_its_own_operation(sim: Any) -> None:
    sim.set_faults(drop_response_next={"batches.cancel": 1})
    batch = sim.submit(sim.chat_lines(1))  # an upload and a create: neither is a cancel
    assert sim.client().batches.list().data[0].id == batch.id
    assert sim.get("/_sim/faults").json()["drop_response_next"]["batches.cancel"] == 1

    # A request that carries the fault header is decided by the header and leaves the count alone.
    with pytest.raises(openai.APIStatusError):
        sim.client().batches.cancel(batch.id, extra_headers={"x-sim-http-fault": "503"})
    assert sim.get("/_sim/faults").json()["drop_response_next"]["batches.cancel"] == 1
    assert sim.client().batches.retrieve(batch.id).status == "validating"


def test_drop_after_header_loses_the_answer_of_one_request(sim: Any) -> None:
    server = sim
    file_id = server.upload(server.chat_lines(1))
    with pytest.raises(openai.APIConnectionError):
        server.client().batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers={"x-sim-http-fault": "drop_after"},
        )
    assert len(_our_batches(server)) == 1

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(
            b"POST /v1/batches/" + _our_batches(server)[0].id.encode() + b"/cancel HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer k\r\nx-sim-http-fault: drop_after\r\nContent-Length: 0\r\n\r\n"
        )
        assert raw.recv(1024) == b""  # closed without a single response byte
    assert server.client().batches.retrieve(_our_batches(server)[0].id).status == "cancelling"

    with pytest.raises(openai.APIConnectionError):
        server.client().files.create(
            file=("again.jsonl", server.jsonl(server.chat_lines(1))),
            purpose="batch",
            extra_headers={"x-sim-http-fault": "drop_after"},
        )
    assert sorted(f.filename for f in server.client().files.list().data) == ["again.jsonl", "input.jsonl"]
    stats = server.stats()
    assert (stats["files_uploaded"], stats["batches_created"], stats["cancel_requests"]) == (2, 1, 1)
    assert stats["http_faults"] == {"drop_after": 3}


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ({"batches.delete": 1}, "unknown operation 'batches.delete'"),
        ({"batches.create": -1}, "non-negative integer"),
        ({"batches.create": 1.5}, "non-negative integer"),
        ({"batches.create": True}, "non-negative integer"),
        ({"batches.create": "soon"}, "non-negative integer"),
        ([1], "expected an object"),
    ],
)
def test_drop_response_next_is_validated(sim: Any, value: Any, complaint: str) -> None:
    sim.set_faults(drop_response_next={"files.create": 2})

    refused = sim.http.put("/_sim/faults", json={"drop_response_next": value})

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "drop_response_next"
    assert "drop_response_next" in error["message"] and complaint in error["message"]
    assert sim.get("/_sim/faults").json()["drop_response_next"]["files.create"] == 2  # nothing changed


def test_drop_response_next_is_replaced_as_a_whole_and_forgotten_on_reset(sim: Any) -> None:
    sim.set_faults(drop_response_next={"batches.create": 2, "files.create": 1})
    updated = sim.set_faults(drop_response_next={"batches.cancel": 3}, http_500_rate=0.0)
    assert updated["drop_response_next"] == {"files.create": 0, "batches.create": 0, "batches.cancel": 3}
    assert sim.set_faults(slow_seconds=1)["drop_response_next"]["batches.cancel"] == 3  # others kept

    sim.reset()

    assert sim.get("/_sim/faults").json()["drop_response_next"]["batches.cancel"] == 0


def test_a_slow_answer_comes_after_the_work_so_a_timed_out_create_still_happened(sim: Any) -> None:
    sim.set_faults(slow_seconds=60)
    file_id = sim.upload(sim.chat_lines(1))

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        sim.client(timeout=1.0).batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers={"x-sim-http-fault": "slow"},
        )

    assert time.monotonic() - started < 30  # the client gave up long before the answer was due
    assert [b.input_file_id for b in _our_batches(sim)] == [file_id]
    assert sim.stats()["batches_created"] == 1
