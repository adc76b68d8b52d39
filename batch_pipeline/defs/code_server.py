"""Dagster's gRPC code server, whose run workers start in a fraction of a second instead of ~6 s.

The code server starts each run in a new process. Dagster spawns it (``multiprocessing`` "spawn"): a
fresh interpreter that imports Dagster and our definitions again before the op can begin. Measured
under ``batchman up`` on the simulator, that was 5-7 s per run, twice per batch (upload, results):
about half of a request's way to its webhook.

Here the server forks its run workers from a forkserver that imported the definitions once at start
(``multiprocessing`` "forkserver" with the definitions module preloaded). A fork copies a process
that has nothing running yet: no thread, no connection, no event loop (the definitions module opens
nothing at import; ``tests/batch_pipeline/defs/test_code_server.py`` checks it). Everything else is
Dagster's own: the same ``start_run_in_subprocess`` target, the same termination and monitoring.

``batchman up`` and ``batchman dagster-code-server`` start the server through this module
(``runtime/dagster_processes.py``); its arguments are ``dagster api grpc``'s own. New code takes a
restart of the server, as with any long-lived code server.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import sys
from typing import Any

from dagster._cli import main as _dagster_main
from dagster._grpc import server as _grpc_server

# Imported by the forkserver once, so that every run worker forked from it has them: the definitions
# (Dagster and our code, ~2.2 s) and the instance's Postgres storage, which a run worker imports when
# it opens the instance (dagster_postgres with alembic and SQLAlchemy, ~0.7 s).
PRELOAD = ("batch_pipeline.defs.definitions", "dagster_postgres")


def forking_context() -> multiprocessing.context.BaseContext:
    """The forkserver context, started now so that its imports are done before the first run."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    multiprocessing.forkserver.ensure_running()
    return ctx


def _install() -> None:
    original_init = _grpc_server.DagsterApiServer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        # Fail loudly when an upgrade renames the attribute: a silent miss would bring back spawns.
        if not isinstance(getattr(self, "_mp_ctx", None), multiprocessing.context.BaseContext):
            raise RuntimeError("DagsterApiServer._mp_ctx is gone: review defs/code_server.py")
        self._mp_ctx = forking_context()

    _grpc_server.DagsterApiServer.__init__ = init


def run() -> int:
    _install()
    sys.argv[0] = "dagster"
    return _dagster_main()


if __name__ == "__main__":
    sys.exit(run())
