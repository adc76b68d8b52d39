"""Fixtures shared by the pipeline's process-level tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_pipeline.simulator.app import create_app as create_simulator
from batch_pipeline.simulator.settings import SimulatorSettings
from batch_pipeline.simulator.testing import ThreadedServer


@pytest.fixture
def live_sim(tmp_path: Path) -> Iterator[ThreadedServer]:
    """The simulator on a real port, finishing a batch in under a second (for Dagster runs in their
    own processes, which cannot move a frozen clock)."""
    settings = SimulatorSettings(
        _env_file=None,
        _env_prefix="SIMULATOR_TESTS_IGNORE_",
        data_dir=tmp_path / "sim",
        validating_seconds=0.2,
        in_progress_seconds=0.5,
        finalizing_seconds=0.2,
        log_level="warning",
    )
    server = ThreadedServer(create_simulator(settings)).start()
    yield server
    server.stop()
