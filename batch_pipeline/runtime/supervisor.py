"""``batchman up``: run every process of the service in the foreground and stop them all together.

Children are plain subprocesses sharing our environment plus the resolved database URL. If one exits
unexpectedly the others are stopped too and ``up`` exits non-zero, so a broken process is never
hidden behind a half-running service. Ctrl-C (SIGINT) or SIGTERM stops everything cleanly, at any
point: before :meth:`Supervisor.wait` a stop signal raises :class:`StopRequested` (see
:func:`raise_on_stop_signals`), so every ``with`` block unwinds and stops what it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 15
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """SIGINT or SIGTERM arrived; raised so that every ``with``/``finally`` on the way up cleans up.

    A BaseException, like KeyboardInterrupt, so ``except Exception`` blocks do not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_on_stop_signals() -> None:
    """From now on the first SIGINT or SIGTERM raises :class:`StopRequested` in the main thread."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stop)


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    # Only the first signal unwinds: a second one must not cut short the cleanup the first set off.
    for other in STOP_SIGNALS:
        signal.signal(other, _already_stopping)
    raise StopRequested(signum)


def _already_stopping(signum: int, _frame: FrameType | None) -> None:
    log.warning("%s received while stopping; still stopping", signal.Signals(signum).name)


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the block and deliver the first one after it, to the handler then in place.

    For steps that must not be cut in half: a child (or postmaster) launched but not yet recorded would
    be left running, since nothing would know to stop it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only; there is nothing to hold here
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda s, _f: held.append(s)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler installed outside Python; the default is the closest we can restore.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if held:
            signal.raise_signal(held[0])


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None


class Supervisor:
    """Starts children and stops them all together; as a context manager, also when the block fails."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[Child] = []
        self._stopping = False
        self._temp_dirs: list[str] = []

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        for path in self._temp_dirs:
            shutil.rmtree(path, ignore_errors=True)

    def temp_dir(self, prefix: str) -> str:
        """A private directory under the system's temp dir, removed once every child has stopped."""
        path = tempfile.mkdtemp(prefix=prefix)
        self._temp_dirs.append(path)
        return path

    def wait_for_socket(self, name: str, path: Path, timeout: float) -> None:
        """Block until the child ``name`` accepts connections on the Unix socket ``path``."""
        wait_for_socket(next(c.process for c in self.children if c.name == name), path, timeout)

    def start(self, name: str, argv: list[str]) -> None:
        child = Child(name, argv)
        # A signal between Popen and append would orphan the child: it runs in its own session.
        with stop_signals_deferred():
            # Own process group: the terminal's Ctrl-C reaches us once, and we stop children in order.
            child.process = subprocess.Popen(argv, env=self.env, start_new_session=True)
            self.children.append(child)
        log.info("started %s (pid %s)", name, child.process.pid)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def wait(self) -> int:
        """Block until a signal or a child exits; then stop all children. Returns the exit code."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        code = 0
        while not self._stopping:
            for child in self.children:
                rc = child.process.poll() if child.process else None
                if rc is not None:
                    log.error("%s exited with code %s; stopping everything", child.name, rc)
                    code = rc or 1
                    self._stopping = True
                    break
            time.sleep(0.3)
        self.stop_all()
        return code

    def stop_all(self) -> None:
        """Stop every child still running (SIGTERM, then SIGKILL after a grace period); idempotent."""
        running = [c for c in reversed(self.children) if c.process and c.process.returncode is None]
        if not running:
            return
        # A signal arriving now is handled once every child is stopped, not halfway through.
        with stop_signals_deferred():
            self._stop(running)
        log.info("all processes stopped")

    @staticmethod
    def _stop(running: list[Child]) -> None:
        for child in running:
            if child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()


def wait_for_socket(process: subprocess.Popen, path: Path, timeout: float) -> None:
    """Block until ``process`` accepts connections on the Unix socket ``path``; raise if it exits
    first or takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with code {process.returncode} before it answered")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args[:3]} did not answer on {path} within {timeout:.0f} s")
        time.sleep(0.1)


def batchman_argv(*args: str) -> list[str]:
    """Run a ``batchman`` subcommand with the same interpreter, whether or not the script is on PATH."""
    return [sys.executable, "-m", "batch_pipeline.cli", *args]
