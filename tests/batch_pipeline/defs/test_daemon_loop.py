"""``batchman up`` and ``batchman dagster-daemon`` run Dagster's daemon with a 1 s sensor loop: Dagster's
own loop sleeps until 5 s have passed since each pass began, whatever a sensor's interval."""

from __future__ import annotations

import sys

import pytest
from dagster._daemon import sensor as sensor_daemon

from batch_pipeline.defs import daemon
from batch_pipeline.runtime.dagster_processes import DAEMON_MODULE, daemon_argv


def test_the_daemon_command_runs_our_module(tmp_path) -> None:
    argv = daemon_argv(tmp_path / "workspace.yaml")
    assert argv[:3] == [sys.executable, "-m", DAEMON_MODULE] and daemon.__name__ == DAEMON_MODULE
    assert argv[3:] == ["run", "-w", str(tmp_path / "workspace.yaml")]


def test_the_sensor_loop_wakes_every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME", 5)  # Dagster's value; restored after
    seen = {}

    def dagster_daemon_main() -> int:
        seen["loop"] = sensor_daemon.MIN_INTERVAL_LOOP_TIME
        seen["argv0"] = sys.argv[0]
        return 0

    monkeypatch.setattr(daemon, "_daemon_main", dagster_daemon_main)
    monkeypatch.setattr(sys, "argv", ["python -m batch_pipeline.defs.daemon", "run"])
    assert daemon.run() == 0
    assert seen == {"loop": 1, "argv0": "dagster-daemon"}


def test_a_dagster_without_the_constant_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME")
    monkeypatch.setattr(daemon, "_daemon_main", lambda: pytest.fail("started without the 1 s loop"))
    with pytest.raises(RuntimeError, match="MIN_INTERVAL_LOOP_TIME"):
        daemon.run()
