"""The code server forks its run workers from a process that has the definitions imported, instead of
spawning a fresh interpreter per run (``defs/code_server.py``)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster._grpc import server as grpc_server

from batch_pipeline.defs import code_server
from batch_pipeline.runtime.dagster_processes import (
    CODE_SERVER_MODULE,
    DEFS_MODULE,
    LOCATION_NAME,
    code_server_argv,
    socket_workspace,
)


def test_the_code_server_command_runs_our_module_on_a_port_or_a_socket(tmp_path: Path) -> None:
    on_port = code_server_argv("0.0.0.0", 4266)
    assert on_port[:5] == [sys.executable, "-m", CODE_SERVER_MODULE, "api", "grpc"]
    assert code_server.__name__ == CODE_SERVER_MODULE
    assert on_port[5:9] == ["-h", "0.0.0.0", "-p", "4266"]
    on_socket = code_server_argv(socket=tmp_path / "code.sock")
    assert on_socket[5:7] == ["--socket", str(tmp_path / "code.sock")]
    assert on_socket[7:] == on_port[9:] == ["-m", DEFS_MODULE, "-a", "defs", "--location-name", LOCATION_NAME]


def test_the_socket_workspace_names_the_same_location(tmp_path: Path) -> None:
    import yaml

    (entry,) = yaml.safe_load(socket_workspace(tmp_path / "a b.sock"))["load_from"]
    assert entry == {"grpc_server": {"socket": str(tmp_path / "a b.sock"), "location_name": LOCATION_NAME}}


def test_importing_the_definitions_starts_no_thread(db_url: str) -> None:
    # A fork copies only the thread that forks: a thread started at import would be missing in every
    # run worker, and a lock it held would stay held there. With a database, as in the code server:
    # the module arranges for its OpenAI call figures to be written there.
    out = subprocess.run(
        [sys.executable, "-c", f"import threading, {DEFS_MODULE}; print(threading.active_count())"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DATABASE_URL": db_url},
    )
    assert out.stdout.strip() == "1"


def test_a_forked_worker_writes_its_openai_call_figures_as_it_ends(tmp_path: Path) -> None:
    # A forked worker leaves by os._exit: Python's atexit never runs there, multiprocessing's exit
    # handlers do. Its figures are its own, not a copy of what the forkserver had pending.
    out = tmp_path / "figures.jsonl"
    code = f"""
import json, threading
from batch_pipeline import openai_call_figures as figures
def sink(rows):
    with open({str(out)!r}, "a") as f:
        f.write(json.dumps([[r.operation, r.calls] for r in rows]) + "\\n")
figures.RECORDER.flush_to(sink, interval=3600)
assert threading.active_count() == 1  # nothing runs before a call
figures.RECORDER.record("files.create", "ok", 0.1)
"""
    ctx = code_server.forking_context()
    worker = ctx.Process(target=exec, args=(code, {}))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == [[["files.create", 1]]]


def test_a_worker_from_the_forking_context_has_the_definitions_already_imported() -> None:
    ctx = code_server.forking_context()
    assert ctx.get_start_method() == "forkserver"
    queue = ctx.Queue()
    check = f"import sys; q.put(({DEFS_MODULE!r} in sys.modules, 'dagster_postgres' in sys.modules))"
    worker = ctx.Process(target=exec, args=(check, {"q": queue}))
    worker.start()
    try:
        assert queue.get(timeout=60) == (True, True)
    finally:
        worker.join(30)
    assert worker.exitcode == 0


def test_the_server_gets_the_forking_context(monkeypatch: pytest.MonkeyPatch) -> None:
    def dagster_init(self: object) -> None:
        self._mp_ctx = multiprocessing.get_context("spawn")  # what Dagster sets

    monkeypatch.setattr(grpc_server.DagsterApiServer, "__init__", dagster_init)
    code_server._install()
    server = grpc_server.DagsterApiServer.__new__(grpc_server.DagsterApiServer)
    server.__init__()
    assert server._mp_ctx.get_start_method() == "forkserver"


def test_a_dagster_without_the_attribute_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpc_server.DagsterApiServer, "__init__", lambda self: None)
    code_server._install()
    server = grpc_server.DagsterApiServer.__new__(grpc_server.DagsterApiServer)
    with pytest.raises(RuntimeError, match="_mp_ctx"):
        server.__init__()
