"""The stack under test, started as ``make up`` starts it (``batchman up``) on its own free ports and
data directory, and a sampler of every process's peak RSS and CPU time while it runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

BATCHMAN = Path(sys.executable).with_name("batchman")
# Process roles by a piece of their command line, first match wins (run workers before the daemon:
# the daemon launches them with `dagster api execute_run`).
_ROLES = (
    ("execute_run", "dagster run worker"),
    ("multiprocessing.spawn", "dagster run worker"),
    ("watch_orphans", "dagster run watcher"),
    ("api grpc", "dagster code server"),
    ("dagster-daemon", "dagster-daemon"),
    ("batch_pipeline.defs.daemon", "dagster-daemon"),
    ("dagster-webserver", "dagster-webserver"),
    ("batchman simulator", "simulator"),
    ("batch_pipeline.cli simulator", "simulator"),
    ("batchman api", "api"),
    ("batch_pipeline.cli api", "api"),
    ("batchman consumer", "rabbitmq consumer"),
    ("batch_pipeline.cli consumer", "rabbitmq consumer"),
    ("batchman up", "batchman up (supervisor)"),
    ("bench.soak.sinks", "sinks (webhook receiver + queue consumer)"),
)


def role_of(cmdline: list[str]) -> str:
    joined = " ".join(cmdline)
    for needle, role in _ROLES:
        if needle in joined:
            return role
    return os.path.basename(cmdline[0]) if cmdline else "?"


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most the process ever held, so a sample between peaks still sees the peak."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class ProcessSampler:
    roots: list[int]
    interval: float = 0.5
    peak_mb: dict[str, float] = field(default_factory=dict)
    processes: dict[str, set[int]] = field(default_factory=dict)
    load_1min: list[float] = field(default_factory=list)  # the machine's load average, per sample
    # CPU seconds (user + system) per pid as last seen, by role: where the machine's two cores went.
    # Postgres's own processes are counted too (from their time at the first sample), since the
    # stack's work ends up there; a process that ends between samples loses its last half second.
    cpu_seconds_by_pid: dict[int, tuple[str, float]] = field(default_factory=dict)
    _postgres_start: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def cpu_seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for role, seconds in self.cpu_seconds_by_pid.values():
            totals[role] = totals.get(role, 0.0) + seconds
        return totals

    def _sample_postgres(self) -> None:
        first = len(self.load_1min) == 1  # postgres processes already running count from here
        for proc in psutil.process_iter(["name", "cpu_times"]):
            if proc.info["name"] != "postgres" or proc.info["cpu_times"] is None:
                continue
            used = proc.info["cpu_times"].user + proc.info["cpu_times"].system
            start = self._postgres_start.setdefault(proc.pid, used if first else 0.0)
            self.cpu_seconds_by_pid[proc.pid] = ("postgres (all backends)", used - start)

    def sample(self) -> None:
        self.load_1min.append(os.getloadavg()[0])
        self._sample_postgres()
        for root in self.roots:
            try:
                procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    role = role_of(proc.cmdline())
                except psutil.Error:
                    continue
                peak = _peak_rss_mb(proc.pid)
                if peak is None:
                    continue
                self.processes.setdefault(role, set()).add(proc.pid)
                self.peak_mb[role] = max(self.peak_mb.get(role, 0.0), peak)
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    self.cpu_seconds_by_pid[proc.pid] = (role, times.user + times.system)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> ProcessSampler:
        threading.Thread(target=self._loop, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


@dataclass
class Stack:
    api: str
    simulator: str
    dagster: str
    process: subprocess.Popen
    log: Path


def _wait(url: str, stack_proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack_proc.poll() is not None:
            raise RuntimeError(f"batchman up exited with {stack_proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(url, timeout=5).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def batchman_up(
    data_dir: Path, database_url: str, ports: dict[str, int], extra_env: dict[str, str]
) -> Iterator[Stack]:
    """``batchman up`` on the simulator; yields once the API is ready (Postgres, RabbitMQ and the Dagster
    daemon's heartbeat); stops it as Ctrl-C would."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "DATABASE_URL", "DATA_DIR", "DAGSTER_HOME")
        and not k.startswith(("RABBITMQ", "SIMULATOR_", "DAGSTER_"))
    }
    env.update({k: str(v) for k, v in ports.items()})
    env.update({"DATA_DIR": str(data_dir), "DATABASE_URL": database_url, "OPENAI_MODE": "simulator"})
    env.update(extra_env)
    log = data_dir / "batchman.log"
    with log.open("w") as out:
        # cwd: the data dir, so no developer's .env is read; own session, so Ctrl-C reaches only it.
        proc = subprocess.Popen(
            [str(BATCHMAN), "up"],
            env=env,
            cwd=data_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(
        api=f"http://127.0.0.1:{ports['PORT']}",
        simulator=f"http://127.0.0.1:{ports['SIMULATOR_PORT']}",
        dagster=f"http://127.0.0.1:{ports['DAGSTER_PORT']}",
        process=proc,
        log=log,
    )
    try:
        _wait(f"{stack.simulator}/_sim/health", proc, log)
        _wait(f"{stack.api}/health/ready", proc, log)
        yield stack
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
