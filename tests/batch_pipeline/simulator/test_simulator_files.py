"""/v1/files: upload validation, retrieve, content, delete, list pagination and expiry."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types import FileDeleted, FileObject

DAY = 86400


def test_upload_retrieve_content_delete_round_trip(sim: Any) -> None:
    client = sim.client()
    data = sim.jsonl(sim.chat_lines(3))

    created = client.files.create(file=("requests.jsonl", data), purpose="batch")

    assert created.id.startswith("file-")
    assert (created.object, created.purpose, created.filename, created.bytes) == (
        "file",
        "batch",
        "requests.jsonl",
        len(data),
    )
    assert created.expires_at == created.created_at + 30 * DAY
    raw = sim.get(f"/v1/files/{created.id}").json()
    assert FileObject.model_validate(raw) == client.files.retrieve(created.id) == created
    assert set(raw) <= set(FileObject.model_fields)  # no misspelt keys (the SDK model ignores them)
    assert client.files.content(created.id).content == data

    deleted = client.files.delete(created.id)
    assert deleted == FileDeleted(id=created.id, object="file", deleted=True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)
    stats = sim.stats()
    assert (stats["files_uploaded"], stats["files_deleted"], stats["files_live"]) == (1, 1, 0)


def _line(custom_id: str = "a", **changes: Any) -> dict[str, Any]:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
    line.update(changes)
    return {k: v for k, v in line.items() if v is not None}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"custom_id": "a",\n', "line 1: not valid JSON"),
        (b"[1, 2]\n", "line 1: each line must be a JSON object"),
        (json.dumps(_line(custom_id=None)).encode(), "'custom_id' must be a non-empty string"),
        (json.dumps(_line(method="GET")).encode(), "'method' must be"),
        (json.dumps(_line(url=None)).encode(), "'url' must be a path"),
        (json.dumps(_line(body="text")).encode(), "'body' must be a JSON object"),
        (
            (json.dumps(_line("x")) + "\n" + json.dumps(_line("x"))).encode(),
            "line 2: duplicate custom_id 'x'",
        ),
        (json.dumps(_line(body={"model": "m", "x_sim_fault": "nope"})).encode(), "unknown x_sim_fault value"),
        (b"\n\n", "the file contains no requests"),
    ],
)
def test_invalid_jsonl_is_rejected_with_openai_error(sim: Any, content: bytes, fragment: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sim.client().files.create(file=("bad.jsonl", content), purpose="batch")

    assert caught.value.status_code == 400
    assert fragment in caught.value.message
    raw = sim.post("/v1/files", files={"file": ("bad.jsonl", content)}, data={"purpose": "batch"}).json()
    assert raw == {
        "error": {
            "message": raw["error"]["message"],
            "type": "invalid_request_error",
            "param": "file",
            "code": "invalid_file_format",
        }
    }
    assert sim.stats()["files_uploaded"] == 0


def test_an_endless_line_is_refused_without_buffering_it(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("batch_pipeline.simulator.jsonl.MAX_LINE_BYTES", 1000)  # the server runs in-process

    with pytest.raises(openai.BadRequestError) as caught:
        sim.client().files.create(file=("long.jsonl", b'{"custom_id": "' + b"x" * 5000), purpose="batch")

    assert "longer than 1000 bytes" in caught.value.message
    assert list((sim.settings.data_dir / "spool").iterdir()) == []


def test_blank_lines_crlf_and_bom_are_accepted(sim: Any) -> None:
    lines = [json.dumps(line).encode() for line in sim.chat_lines(2)]
    content = b"\xef\xbb\xbf" + lines[0] + b"\r\n\r\n" + lines[1]

    created = sim.client().files.create(file=("ok.jsonl", content), purpose="batch")

    batch = sim.client().batches.create(
        input_file_id=created.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert sim.finish(batch.id).request_counts.total == 2


@pytest.mark.parametrize(
    ("files", "data", "param", "fragment"),
    [
        ({"file": ("input.txt", b"{}")}, {"purpose": "batch"}, "file", "Must be .jsonl"),
        ({"file": ("input.jsonl", b"{}")}, {}, "purpose", "Missing required parameter: 'purpose'"),
        (
            {"file": ("input.jsonl", b"{}")},
            {"purpose": "batch_output"},
            "purpose",
            "Invalid value for 'purpose'",
        ),
        (None, {"purpose": "batch"}, "file", "Missing required parameter: 'file'"),
        (
            {"file": ("input.jsonl", b"{}")},
            {"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
            "expires_after.seconds",
            "between 3600 and 2592000",
        ),
    ],
)
def test_upload_parameter_errors(
    sim: Any, files: Any, data: dict[str, str], param: str, fragment: str
) -> None:
    if files is None:  # a multipart body with fields only
        response = sim.post("/v1/files", files={"purpose": (None, "batch")})
    else:
        response = sim.post("/v1/files", files=files, data=data)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_upload_must_be_multipart(sim: Any) -> None:
    response = sim.post("/v1/files", json={"purpose": "batch"})

    assert response.status_code == 400
    assert "multipart/form-data" in response.json()["error"]["message"]


def test_other_purposes_are_stored_without_validation_or_expiry(sim: Any) -> None:
    created = sim.client().files.create(file=("notes.txt", b"not json at all"), purpose="user_data")

    assert (created.purpose, created.expires_at) == ("user_data", None)
    assert sim.client().files.content(created.id).content == b"not json at all"


def test_file_over_the_size_limit_is_rejected_and_not_kept(make_server: Any) -> None:
    server = make_server(max_file_bytes=1000)
    big = server.jsonl(server.chat_lines(30))
    assert len(big) > 1000

    with pytest.raises(openai.BadRequestError) as caught:
        server.client().files.create(file=("big.jsonl", big), purpose="batch")

    assert caught.value.code == "file_too_large"
    assert server.stats()["files_uploaded"] == 0
    assert list((server.settings.data_dir / "spool").iterdir()) == []
    assert list((server.settings.data_dir / "files").iterdir()) == []


def test_too_many_requests_in_one_file_is_rejected(make_server: Any) -> None:
    server = make_server(max_requests_per_batch=3)
    server.upload(server.chat_lines(3))

    with pytest.raises(openai.BadRequestError) as caught:
        server.upload(server.chat_lines(4))

    assert "more than 3 requests" in caught.value.message


def test_expires_after_is_honoured_and_expired_files_vanish(sim: Any) -> None:
    client = sim.client()
    created = client.files.create(
        file=("a.jsonl", sim.jsonl(sim.chat_lines(1))),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600

    sim.advance(3599)
    assert client.files.content(created.id).content
    sim.advance(1)

    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    assert [f.id for f in client.files.list()] == []


def test_default_expiry_is_thirty_days(sim: Any) -> None:
    file_id = sim.upload(sim.chat_lines(1))

    sim.advance(30 * DAY - 1)
    assert sim.client().files.retrieve(file_id).id == file_id
    sim.advance(1)

    with pytest.raises(openai.NotFoundError):
        sim.client().files.content(file_id)


def test_control_surface_can_expire_a_file_now(sim: Any) -> None:
    file_id = sim.upload(sim.chat_lines(1))

    expired = sim.post(f"/_sim/files/{file_id}/expire")

    assert expired.status_code == 200
    assert FileObject.model_validate(expired.json()).expires_at is not None
    assert sim.get(f"/v1/files/{file_id}/content").status_code == 404
    assert sim.post("/_sim/files/file-unknown/expire").status_code == 404


def test_files_list_pagination_order_and_purpose_filter(sim: Any) -> None:
    client = sim.client()
    batch_ids = []
    for i in range(5):
        batch_ids.append(sim.upload([sim.chat_line(f"x{i}")], name=f"in{i}.jsonl"))
        sim.advance(1)  # distinct created_at values
    other = client.files.create(file=("notes.txt", b"hi"), purpose="user_data").id

    everything = [f.id for f in client.files.list()]
    assert everything == [other, *reversed(batch_ids)]  # newest first by default

    first = client.files.list(purpose="batch", limit=2, order="asc")
    assert [f.id for f in first.data] == batch_ids[:2]
    assert first.has_more is True
    second = client.files.list(purpose="batch", limit=2, order="asc", after=first.data[-1].id)
    assert [f.id for f in second.data] == batch_ids[2:4]
    raw = sim.get(
        "/v1/files", params={"purpose": "batch", "limit": 2, "order": "asc", "after": batch_ids[3]}
    ).json()
    assert raw == {
        "object": "list",
        "data": raw["data"],
        "first_id": batch_ids[4],
        "last_id": batch_ids[4],
        "has_more": False,
    }
    assert [FileObject.model_validate(f).id for f in raw["data"]] == [batch_ids[4]]
    assert [
        f.id for f in client.files.list(purpose="batch", limit=2, order="asc")
    ] == batch_ids  # auto-paging
    assert [f.id for f in client.files.list(purpose="user_data")] == [other]


def test_list_cursor_survives_deletion_of_the_cursor_file(sim: Any) -> None:
    ids = []
    for i in range(3):
        ids.append(sim.upload([sim.chat_line(f"x{i}")]))
        sim.advance(1)
    sim.client().files.delete(ids[1])

    page = sim.client().files.list(order="asc", after=ids[1])

    assert [f.id for f in page.data] == [ids[2]]


def test_files_list_limit_is_validated(sim: Any) -> None:
    response = sim.get("/v1/files", params={"limit": 10_001})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "limit"


def test_v1_requires_a_bearer_key_unless_disabled(sim: Any, make_server: Any) -> None:
    response = sim.http.get("/v1/files", headers={"Authorization": ""})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.http.get("/_sim/stats", headers={"Authorization": ""}).status_code == 200

    open_server = make_server(require_api_key=False)
    assert open_server.http.get("/v1/files", headers={"Authorization": ""}).status_code == 200


def test_unknown_routes_answer_openai_style_404(sim: Any) -> None:
    response = sim.get("/v1/does-not-exist")

    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/does-not-exist)"
