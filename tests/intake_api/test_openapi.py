"""``GET /api/openapi`` documents what the API really does; ``GET /api/swaggerui`` serves the docs UI."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

import batch_pipeline
from batch_pipeline.intake.endpoints import SUPPORTED_URLS
from tests.intake_api.conftest import execute, serve, valid_request, without

ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"
# The operations this directory covers (other routers may add more paths to the same document).
INTAKE_OPERATIONS = {
    "/health": {"get"},
    "/health/ready": {"get"},
    "/api/requests": {"get", "post"},
    "/api/requests/bulk": {"post"},
    "/api/requests/{custom_id}": {"get"},
    "/api/requests/{custom_id}/redeliver": {"post"},
}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(schema: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = schema
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _schema(shared_client: httpx.Client) -> dict[str, Any]:
    resp = shared_client.get("/api/openapi")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    return json.loads(resp.content)


def test_openapi_document_is_valid_json_with_title_and_components(shared_client: httpx.Client) -> None:
    schema = _schema(shared_client)
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "OpenAI Batch Manager API"
    assert schema["info"]["version"] == batch_pipeline.__version__
    components = schema["components"]["schemas"]
    for name in ("RequestInput", "ErrorEnvelope", "Accepted", "BulkResponse", "RequestDetail", "RequestPage"):
        assert name in components, name
    # FastAPI's default 422 shape is not what the API returns, so it must not be documented.
    assert "HTTPValidationError" not in components
    # Every reference resolves.
    for ref in set(_refs(schema)):
        assert _resolve(schema, ref) is not None, ref

    for path, methods in INTAKE_OPERATIONS.items():
        assert path in schema["paths"], path
        assert set(schema["paths"][path]) == methods, path


def test_request_input_schema_matches_the_contract(shared_client: httpx.Client) -> None:
    schema = _schema(shared_client)
    request_input = schema["components"]["schemas"]["RequestInput"]
    assert set(request_input["required"]) == {"custom_id", "url", "method", "body", "delivery_config"}
    assert request_input.get("additionalProperties") is False
    props = request_input["properties"]
    url = props["url"]
    if "$ref" in url:
        url = _resolve(schema, url["$ref"])
    assert set(url["enum"]) == set(SUPPORTED_URLS)
    method = props["method"]
    assert method.get("const") == "POST" or method.get("enum") == ["POST"]
    # Both bodies, single and bulk, are documented against RequestInput.
    post = schema["paths"]["/api/requests"]["post"]["requestBody"]["content"]
    assert post["application/json"]["schema"] == {"$ref": "#/components/schemas/RequestInput"}
    bulk = schema["paths"]["/api/requests/bulk"]["post"]["requestBody"]["content"]
    assert bulk["application/json"]["schema"]["items"] == {"$ref": "#/components/schemas/RequestInput"}
    assert "application/x-ndjson" in bulk


def test_error_responses_reference_the_error_envelope(shared_client: httpx.Client) -> None:
    schema = _schema(shared_client)
    envelope = schema["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["errors"]
    checked = 0
    for path, methods in INTAKE_OPERATIONS.items():
        for method in methods:
            op = schema["paths"][path][method]
            for status, response in op["responses"].items():
                if status in ("401", "404", "409", "413", "422", "500"):
                    ref = response["content"]["application/json"]["schema"]
                    assert ref == {"$ref": ENVELOPE_REF}, f"{method} {path} {status}: {ref}"
                    checked += 1
    assert checked >= 10


def test_every_operation_documents_500_and_only_reachable_422s(shared_client: httpx.Client) -> None:
    schema = _schema(shared_client)
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            response = op["responses"]["500"]["content"]["application/json"]["schema"]
            assert response == {"$ref": ENVELOPE_REF}, f"{method} {path}"
    # A plain string in the path cannot fail validation, so this lookup never answers 422.
    assert "422" not in schema["paths"]["/api/requests/{custom_id}"]["get"]["responses"]
    assert "422" in schema["paths"]["/api/requests/{custom_id}/redeliver"]["post"]["responses"]
    assert "422" in schema["paths"]["/api/requests"]["get"]["responses"]  # limit=0, state=nope


def test_swaggerui_serves_html_pointing_at_the_document(shared_client: httpx.Client) -> None:
    resp = shared_client.get("/api/swaggerui")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in resp.text.lower()
    assert "/api/openapi" in resp.text


def test_every_observed_status_is_documented(tmp_path: Path, db_url: str, pg_server_url: str) -> None:
    """Drive each operation through each status the tests see, then check the document lists them."""
    observed: dict[tuple[str, str], set[int]] = defaultdict(set)
    auth = {"Authorization": "Bearer s3cret"}
    overrides = {
        "api_token": "s3cret",
        "intake_max_body_bytes": 8192,
        "batch_max_bytes": 2048,
        "bulk_max_items": 3,
    }
    with serve(tmp_path, db_url, **overrides) as c:

        def hit(method: str, template: str, path: str, expect: int, **kw: Any) -> httpx.Response:
            kw.setdefault("headers", auth)
            resp = c.request(method, path, **kw)
            assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
            observed[(method.lower(), template)].add(resp.status_code)
            return resp

        big_line = valid_request("oa-line", body={"model": "gpt-4o-mini", "input": "x" * 3000})
        huge_body = valid_request("oa-huge", body={"model": "gpt-4o-mini", "input": "x" * 10_000})
        single, bulk = "/api/requests", "/api/requests/bulk"
        detail, redeliver = "/api/requests/{custom_id}", "/api/requests/{custom_id}/redeliver"

        hit("POST", single, "/api/requests", 202, json=valid_request("oa-1"))
        hit("POST", single, "/api/requests", 409, json=valid_request("oa-1"))
        hit("POST", single, "/api/requests", 422, json=without(valid_request("oa-2"), "url"))
        hit("POST", single, "/api/requests", 422, content=b"{oops")
        hit("POST", single, "/api/requests", 413, json=big_line)
        hit("POST", single, "/api/requests", 413, json=huge_body)
        hit("POST", single, "/api/requests", 401, json=valid_request("oa-3"), headers={})

        hit("POST", bulk, "/api/requests/bulk", 200, json=[valid_request("oa-b1")])
        hit("POST", bulk, "/api/requests/bulk", 413, json=[valid_request(f"oa-b{i}") for i in range(4)])
        hit("POST", bulk, "/api/requests/bulk", 422, json=[])
        hit("POST", bulk, "/api/requests/bulk", 401, json=[valid_request("oa-b2")], headers={})

        hit("GET", single, "/api/requests", 200)
        hit("GET", single, "/api/requests", 422, params={"limit": 0})
        hit("GET", single, "/api/requests", 401, headers={})

        hit("GET", detail, "/api/requests/oa-1", 200)
        hit("GET", detail, "/api/requests/oa-missing", 404)
        hit("GET", detail, "/api/requests/oa-1", 401, headers={})

        hit("POST", redeliver, "/api/requests/oa-missing/redeliver", 404)
        hit("POST", redeliver, "/api/requests/oa-1/redeliver", 422)
        execute(
            db_url,
            "UPDATE batchman.requests SET result = %s, state = 'delivered' WHERE custom_id = 'oa-1'",
            (Jsonb({"id": "batch_req_1", "custom_id": "oa-1"}),),
        )
        hit("POST", redeliver, "/api/requests/oa-1/redeliver", 202)
        hit("POST", redeliver, "/api/requests/oa-1/redeliver", 401, headers={})

        hit("GET", "/health", "/health", 200)
        hit("GET", "/health/ready", "/health/ready", 200)

        schema = c.get("/api/openapi").json()

        name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        hit("GET", "/health/ready", "/health/ready", 503)

    assert len(observed) == 7
    for (method, path), statuses in sorted(observed.items()):
        documented = set(schema["paths"][path][method]["responses"])
        missing = {str(s) for s in statuses} - documented
        assert not missing, (
            f"{method.upper()} {path} answers {sorted(missing)} but documents {sorted(documented)}"
        )


def test_the_document_states_the_custom_id_limit_this_server_enforces(tmp_path: Path, db_url: str) -> None:
    from tests.intake_api.conftest import serve, valid_request

    with serve(tmp_path, db_url, custom_id_max_length=40) as client:
        schema = client.get("/api/openapi").json()
        assert schema["components"]["schemas"]["RequestInput"]["properties"]["custom_id"]["maxLength"] == 40
        assert client.post("/api/requests", json=valid_request("x" * 41)).status_code == 422
        assert client.post("/api/requests", json=valid_request("x" * 40)).status_code == 202
