"""``batchman up``: run every process of the service in the foreground and stop them all together.

Children are plain subprocesses sharing our environment plus the resolved database URL. If one exits
unexpectedly the others are stopped too and ``up`` exits non-zero, so a broken process is never
hidden behind a half-running service. Ctrl-C (SIGINT) or SIGTERM stops everything cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 15


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None


class Supervisor:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[Child] = []
        self._stopping = False

    def start(self, name: str, argv: list[str]) -> None:
        child = Child(name, argv)
        # Own process group: the terminal's Ctrl-C reaches us once, and we stop children in order.
        child.process = subprocess.Popen(argv, env=self.env, start_new_session=True)
        log.info("started %s (pid %s)", name, child.process.pid)
        self.children.append(child)

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
        for child in reversed(self.children):
            if child.process and child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        log.info("all processes stopped")


def batchman_argv(*args: str) -> list[str]:
    """Run a ``batchman`` subcommand with the same interpreter, whether or not the script is on PATH."""
    return [sys.executable, "-m", "batch_pipeline.cli", *args]
