"""``batchman up`` for real: with no OPENAI_API_KEY it starts the simulator (and says so), the API,
the Dagster webserver and daemon; Ctrl-C or SIGTERM, at any point, stops every one of them and the
embedded Postgres."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from batch_pipeline import cli
from batch_pipeline.config import Settings
from batch_pipeline.runtime.embedded_postgres import postmasters_of
from batch_pipeline.runtime.supervisor import (
    STOP_SIGNALS,
    StopRequested,
    Supervisor,
    raise_on_stop_signals,
    stop_signals_deferred,
)
from tests.conftest import free_port

# Real processes: left out of `make test-fast`.
pytestmark = pytest.mark.process

BATCHMAN = Path(sys.executable).with_name("batchman")


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"batchman up exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=2).raise_for_status()
        except httpx.HTTPError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer:\n{log.read_text()[-3000:]}")


def _batchman(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    with (cwd / "batchman.log").open("w") as out:
        return subprocess.Popen(
            [str(BATCHMAN), *args],
            env=env,
            cwd=cwd,  # no .env of the developer's is read
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _service_env(ports: dict[str, int], data_dir: Path, database_url: str | None) -> dict[str, str]:
    """Our environment without a key, RabbitMQ or database (unless given), on free ports."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "DATABASE_URL", "DATA_DIR") and not k.startswith("RABBITMQ")
    }
    env.update({k: str(v) for k, v in ports.items()})
    env["DATA_DIR"] = str(data_dir)
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def _postmaster_pid(pgdata: Path) -> int:
    """The postmaster's pid from postmaster.pid, 0 while there is none. initdb's bootstrap backend
    writes the same file with its pid negated, so a positive pid is a real server."""
    try:
        return max(0, int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0]))
    except (FileNotFoundError, ValueError):  # not there yet, or caught half-written
        return 0


def _wait_until(condition: Callable[[], object], what: str, proc: subprocess.Popen, log: Path) -> object:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if proc.poll() is not None:
            pytest.fail(f"batchman exited with {proc.returncode} before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)
    pytest.fail(f"no {what} within 120 s:\n{log.read_text()[-3000:]}")


def _assert_postgres_stopped(pgdata: Path, pid: int) -> None:
    """Neither the postmaster we saw nor any other for this data dir runs (a zombie has exited)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not postmasters_of(pgdata) and not _running(pid):
            return
        time.sleep(0.1)
    pytest.fail(f"embedded Postgres still running: {[p.pid for p in postmasters_of(pgdata)]}")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "data"
    yield data_dir
    for proc in postmasters_of(data_dir / "postgres"):  # a failed test must not leave a server behind
        proc.send_signal(signal.SIGINT)


def test_up_starts_everything_on_the_simulator_and_sigterm_stops_it_and_the_embedded_postgres(
    data_dir: Path, tmp_path: Path
) -> None:
    """With an external database and Ctrl-C (SIGINT): ``test_up_end_to_end.py``, which also sends
    requests through the running processes."""
    ports = {"PORT": free_port(), "DAGSTER_PORT": free_port(), "SIMULATOR_PORT": free_port()}
    stop_signal, embedded = signal.SIGTERM, True
    proc = _batchman(["up", "--host", "127.0.0.1"], _service_env(ports, data_dir, None), tmp_path)
    log = tmp_path / "batchman.log"
    try:
        health = _wait_for(f"http://127.0.0.1:{ports['PORT']}/health", proc, log).json()
        assert health["simulator"] is True
        sim = _wait_for(f"http://127.0.0.1:{ports['SIMULATOR_PORT']}/_sim/health", proc, log).json()
        assert sim["simulator"] is True
        # The webserver runs under /dagster, and the API proxies it there on its own port.
        _wait_for(f"http://127.0.0.1:{ports['DAGSTER_PORT']}/dagster/server_info", proc, log)
        _wait_for(f"http://127.0.0.1:{ports['PORT']}/dagster/server_info", proc, log)
        assert "SIMULATOR" in log.read_text()  # the loud banner
        pid = _postmaster_pid(data_dir / "postgres")
        assert bool(pid) is embedded

        os.killpg(proc.pid, stop_signal)  # SIGINT: what the terminal sends on Ctrl-C
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Every process is gone: nothing answers on any of the ports any more.
    for port in ports.values():
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    if embedded:
        _assert_postgres_stopped(data_dir / "postgres", pid)


@pytest.mark.parametrize("to_group", [False, True], ids=["to-batchman", "to-its-process-group"])
def test_sigterm_while_up_starts_stops_the_embedded_postgres(
    to_group: bool, data_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM as soon as the embedded Postgres runs, long before the API answers. Sent to the process
    group, it also reaches a `pg_ctl start` still waiting for the server (as the terminal's Ctrl-C
    would), which leaves the postmaster it launched without a handle."""
    ports = {"PORT": free_port(), "DAGSTER_PORT": free_port(), "SIMULATOR_PORT": free_port()}
    proc = _batchman(["up", "--host", "127.0.0.1"], _service_env(ports, data_dir, None), tmp_path)
    log = tmp_path / "batchman.log"
    pgdata = data_dir / "postgres"
    try:
        pid = _wait_until(lambda: _postmaster_pid(pgdata), "embedded Postgres", proc, log)
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_postgres_stopped(pgdata, pid)
    for port in ports.values():  # and any child it had started by then is gone too
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)


def test_sigterm_stops_api_and_its_embedded_postgres(data_dir: Path, tmp_path: Path) -> None:
    """`batchman api` on its own: uvicorn stops on SIGTERM and hands it on; the embedded Postgres must
    be stopped before the process ends (SIGTERM's default action would kill it on the spot)."""
    port = free_port()
    proc = _batchman(["api", "--host", "127.0.0.1"], _service_env({"PORT": port}, data_dir, None), tmp_path)
    log = tmp_path / "batchman.log"
    try:
        _wait_for(f"http://127.0.0.1:{port}/health/ready", proc, log)
        pid = _postmaster_pid(data_dir / "postgres")
        assert pid
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_postgres_stopped(data_dir / "postgres", pid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)


# --- The signal handling itself, in this process ---------------------------------------------------


def _unhandled(signum: int, _frame: object) -> None:
    pytest.fail(f"{signal.Signals(signum).name} reached the test's own handler")


@pytest.fixture
def restore_stop_handlers() -> Iterator[None]:
    """Stop signals raised by a test fail it, rather than end the whole run, if nothing else catches
    them; pytest's handlers come back after."""
    previous = {signum: signal.signal(signum, _unhandled) for signum in STOP_SIGNALS}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _fake_command(events: list[str], *signals: int) -> Callable[[Settings, argparse.Namespace], int]:
    """A command that receives ``signals`` while it runs, then records whether its cleanup ran."""

    def command(_settings: Settings, _args: argparse.Namespace) -> int:
        try:
            signal.raise_signal(signals[0])
            events.append("ran on")
        finally:
            for later in signals[1:]:
                signal.raise_signal(later)  # must not cut the cleanup short
            events.append("cleaned up")
        return 5

    return command


@pytest.mark.parametrize(
    ("command", "stop_signal", "code"),
    [
        ("up", signal.SIGTERM, 0),  # a service stopped on request ends normally
        ("api", signal.SIGINT, 0),
        ("migrate", signal.SIGTERM, 128 + signal.SIGTERM),  # a one-shot command did not finish
    ],
)
def test_a_stop_signal_unwinds_the_command_so_its_cleanup_runs(
    command: str,
    stop_signal: int,
    code: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_stop_handlers: None,
    settings_factory: Callable[..., Settings],
) -> None:
    events: list[str] = []
    monkeypatch.setattr(cli, "get_settings", settings_factory)
    monkeypatch.setattr(
        cli, f"cmd_{command}", _fake_command(events, stop_signal, signal.SIGTERM, signal.SIGINT)
    )
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    assert cli.main([command]) == code
    assert events == ["cleaned up"]
    assert {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} == before


def test_children_started_before_a_stop_signal_are_stopped(restore_stop_handlers: None) -> None:
    raise_on_stop_signals()
    with pytest.raises(StopRequested), Supervisor(dict(os.environ)) as sup:
        sup.start("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
        signal.raise_signal(signal.SIGTERM)  # e.g. while the next child starts
    (child,) = sup.children
    assert child.process.returncode is not None


def test_a_deferred_stop_signal_arrives_after_the_block(restore_stop_handlers: None) -> None:
    raise_on_stop_signals()
    steps = []
    with pytest.raises(StopRequested):
        with stop_signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            steps.append("finished")
        steps.append("after")
    assert steps == ["finished"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "api.internal"])
def test_api_refuses_a_reachable_address_without_a_token(host: str, tmp_path: Path) -> None:
    env = _service_env({"PORT": free_port()}, tmp_path / "data", None)
    env.pop("API_TOKEN", None)
    done = subprocess.run(
        [str(BATCHMAN), "api", "--host", host],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"HOST={host}" in done.stderr and "API_TOKEN" in done.stderr
    assert not (tmp_path / "data" / "postgres").exists()  # refused before anything started


def test_hosts_default_to_loopback_and_a_token_or_the_override_allows_others(tmp_path: Path) -> None:
    from batch_pipeline.config import exposure_error, is_loopback
    from tests.conftest import make_settings

    settings = make_settings(tmp_path)
    assert (settings.host, settings.dagster_host) == ("127.0.0.1", "127.0.0.1")
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))
    assert exposure_error(settings, "127.0.0.1") is None
    assert "API_TOKEN" in (exposure_error(settings, "0.0.0.0") or "")
    assert exposure_error(make_settings(tmp_path, api_token="t"), "0.0.0.0") is None
    assert exposure_error(make_settings(tmp_path, allow_unauthenticated=True), "0.0.0.0") is None


@pytest.mark.parametrize(("status", "refused"), [(401, True), (403, True), (500, False), (200, False)])
def test_the_start_up_check_says_a_refused_key_at_once(
    status: int, refused: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import make_settings

    seen: list[str] = []

    class OpenAI(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("authorization", ""))
            body = {"object": "list", "data": [], "has_more": False}
            if status != 200:
                body = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), OpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        settings = make_settings(tmp_path, openai_api_key="sk-checked", openai_base_url=base_url)
        problem = cli.check_openai_key(settings)
        assert cli.check_openai_key(make_settings(tmp_path)) is None  # the simulator: nothing to check
    finally:
        server.shutdown()
    assert seen == ["Bearer sk-checked"]  # one call, with the key, and none on the simulator
    assert (problem is not None) == refused
    if refused:
        assert "OPENAI_API_KEY" in problem and "Incorrect API key provided" in problem
        assert "sk-checked" not in caplog.text
