"""Control surface, statistics, concurrency, persistence, settings validation and import hygiene."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import openai
import pytest

from batch_pipeline.simulator.app import banner
from batch_pipeline.simulator.settings import SimulatorConfigError, SimulatorSettings, load_settings
from batch_pipeline.simulator.testing import simulator_in_thread

REPO = Path(__file__).resolve().parents[3]


def test_health_and_frozen_clock(sim: Any) -> None:
    before = sim.get("/_sim/health").json()
    assert before["status"] == "ok"
    assert sim.get("/_sim/health").json()["now"] == before["now"]  # frozen: no drift between calls

    assert sim.advance(90) == before["now"] + 90
    assert sim.get("/_sim/health").json()["now"] == before["now"] + 90


@pytest.mark.parametrize("body", [{"seconds": -1}, {"seconds": "5"}, {}, [], {"seconds": True}])
def test_advance_rejects_bad_input(sim: Any, body: Any) -> None:
    response = sim.post("/_sim/advance", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "seconds"


def test_stats_count_batches_by_metadata_value(sim: Any) -> None:
    file_id = sim.upload(sim.chat_lines(1))
    for value in ("42", "42", "43"):
        sim.client().batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"batch_id": value, "tenant": "acme"},
        )
    sim.client().batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")

    stats = sim.stats()

    assert stats["batches_created"] == 4
    assert stats["batches_by_metadata"] == {"batch_id": {"42": 2, "43": 1}, "tenant": {"acme": 3}}
    assert stats["batches_by_endpoint"] == {"/v1/chat/completions": 3, "/v1/embeddings": 1}
    assert stats["batches_by_status"] == {"validating": 4}
    assert stats["files_uploaded"] == 1
    sim.advance(10)
    assert sim.stats()["batches_by_status"] == {"in_progress": 3, "failed": 1}  # embeddings url mismatch


def test_reset_forgets_everything(sim: Any) -> None:
    batch = sim.submit(sim.chat_lines(1))
    sim.set_faults(http_500_rate=0.5)
    advanced = sim.advance(1000)

    sim.reset()

    stats = sim.stats()
    assert (stats["batches_created"], stats["files_uploaded"], stats["http_requests"]) == (0, 0, 0)
    assert sim.get("/_sim/faults").json()["http_500_rate"] == 0.0
    assert stats["now"] < advanced  # the clock offset is gone too
    with pytest.raises(openai.NotFoundError):
        sim.client().batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        sim.client().files.retrieve(batch.input_file_id)


def test_faults_can_be_read_and_changed_with_validation(sim: Any) -> None:
    assert sim.get("/_sim/faults").json()["token_limits"] == {}

    updated = sim.set_faults(token_limits="gpt-4o=10,gpt-4o-mini=20", slow_seconds=0.5)
    assert updated["token_limits"] == {"gpt-4o": 10, "gpt-4o-mini": 20}
    assert sim.get("/_sim/faults").json()["slow_seconds"] == 0.5

    bad_rate = sim.http.put("/_sim/faults", json={"http_429_rate": 2})
    assert bad_rate.status_code == 400
    assert "SIMULATOR_HTTP_429_RATE" in bad_rate.json()["error"]["message"]
    too_much = sim.http.put("/_sim/faults", json={"http_500_rate": 0.6, "drop_rate": 0.6})
    assert "must not exceed 1" in too_much.json()["error"]["message"]
    unknown = sim.http.put("/_sim/faults", json={"explode_rate": 1})
    assert unknown.status_code == 400 and "SIMULATOR_EXPLODE_RATE" in unknown.json()["error"]["message"]
    assert sim.get("/_sim/faults").json()["http_429_rate"] == 0.0  # failed updates change nothing


def test_concurrent_clients_never_share_or_lose_a_batch(sim: Any) -> None:
    threads, per_thread = 8, 5
    created: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(worker_id: int) -> None:
        try:
            client = sim.client(timeout=30.0)
            for n in range(per_thread):
                file_id = client.files.create(
                    file=("in.jsonl", sim.jsonl(sim.chat_lines(2))), purpose="batch"
                ).id
                batch = client.batches.create(
                    input_file_id=file_id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    metadata={"batch_id": f"{worker_id}-{n}"},
                )
                with lock:
                    created.append(batch.id)
        except BaseException as exc:
            failures.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    assert failures == []
    total = threads * per_thread
    assert len(created) == len(set(created)) == total
    stats = sim.stats()
    assert (stats["batches_created"], stats["files_uploaded"]) == (total, total)
    assert sorted(stats["batches_by_metadata"]["batch_id"].values()) == [1] * total  # nothing submitted twice
    assert sorted(b.id for b in sim.client().batches.list(limit=100)) == sorted(created)


def test_state_survives_a_restart_with_a_data_dir(make_server: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "persistent"
    first = make_server(data_dir=data_dir)
    batch = first.submit(first.chat_lines(3), metadata={"batch_id": "7"})
    first.advance(30)
    first.stop()

    second = make_server(data_dir=data_dir)
    resumed = second.client().batches.retrieve(batch.id)
    assert resumed.status == "in_progress" and resumed.request_counts.completed == 1
    assert second.stats()["batches_by_metadata"] == {"batch_id": {"7": 1}}
    done = second.finish(batch.id)

    assert done.status == "completed"
    assert len(second.read_lines(done.output_file_id)) == 3


def test_damaged_state_file_does_not_prevent_start(make_server: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "damaged"
    data_dir.mkdir()
    (data_dir / "state.json").write_text("{not json")

    server = make_server(data_dir=data_dir)

    assert server.stats()["batches_created"] == 0
    assert (data_dir / "state.json.corrupt").exists()


def test_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULATOR_HTTP_503_RATE", "1.5")
    monkeypatch.setenv("SIMULATOR_VALIDATING_SECONDS", "soon")
    with pytest.raises(SimulatorConfigError) as caught:
        load_settings(_env_file=None)
    assert "SIMULATOR_HTTP_503_RATE" in str(caught.value)
    assert "SIMULATOR_VALIDATING_SECONDS" in str(caught.value)

    monkeypatch.delenv("SIMULATOR_HTTP_503_RATE")
    monkeypatch.delenv("SIMULATOR_VALIDATING_SECONDS")
    monkeypatch.setenv("SIMULATOR_TOKEN_LIMITS", '{"gpt-4o-mini": 2000000}')
    assert load_settings(_env_file=None).token_limits == {"gpt-4o-mini": 2_000_000}
    monkeypatch.setenv("SIMULATOR_TOKEN_LIMITS", "gpt-4o-mini=-5")
    with pytest.raises(SimulatorConfigError, match="SIMULATOR_TOKEN_LIMITS"):
        load_settings(_env_file=None)


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_data_dir_means_unset_not_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SIMULATOR_DATA_DIR", value)
    assert load_settings(_env_file=None).data_dir is None


def test_defaults_match_the_documentation() -> None:
    defaults = SimulatorSettings(_env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_")
    assert (defaults.validating_seconds, defaults.in_progress_seconds) == (1, 3)
    assert (defaults.finalizing_seconds, defaults.cancelling_seconds) == (1, 1)
    assert defaults.file_expiry_seconds == 30 * 86400
    assert defaults.token_limits == {} and defaults.data_dir is None

    docs = (REPO / "docs" / "simulator.md").read_text()
    for name in SimulatorSettings.model_fields:
        assert f"SIMULATOR_{name.upper()}" in docs, f"SIMULATOR_{name.upper()} is not documented"
    for marker in ("x_sim_fault", "sim_fault", "x-sim-http-fault", "/_sim/advance", "/_sim/stats"):
        assert marker in docs


def test_banner_says_no_real_calls_are_made() -> None:
    assert banner("127.0.0.1", 4010) == (
        "OpenAI Batch API SIMULATOR on http://127.0.0.1:4010 — no real OpenAI calls are made"
    )


def test_importing_the_simulator_pulls_in_neither_dagster_nor_psycopg() -> None:
    code = (
        "import sys\n"
        "import batch_pipeline.simulator as sim\n"
        "sim.create_app(sim.SimulatorSettings(_env_file=None))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'psycopg', 'psycopg2'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_simulator_in_thread_helper_serves_the_sdk(tmp_path: Path) -> None:
    settings = SimulatorSettings(_env_file=None, _env_prefix="SIMULATOR_TESTS_IGNORE_", data_dir=tmp_path)
    with simulator_in_thread(settings) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        uploaded = client.files.create(file=("a.txt", b"hello"), purpose="user_data")
        assert client.files.content(uploaded.id).content == b"hello"
        client.close()
