"""Dagster's storage as the repo's dagster.yaml configures it: Postgres, with connections pooled per
process instead of one new connection (one Postgres backend process) per statement."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.base_storage import DagsterStorage

from batch_pipeline.db import dagster_storage_url
from batch_pipeline.defs.dagster_storage import POOL_SIZE, PooledPostgresStorage
from tests.databases import ended_sessions

ROOT = Path(__file__).resolve().parents[3]
OPERATIONS = 60


@pytest.fixture
def instance(
    tmp_path: Path, empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    shutil.copyfile(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_storage_url(empty_db_url))
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as inst:
        yield inst


def _storage_work(instance: dg.DagsterInstance) -> None:
    # Run storage, event log storage and schedule storage, as the daemon and a run touch them.
    for _ in range(OPERATIONS // 3):
        instance.get_runs(limit=1)
        instance.get_records_for_run("no-such-run", limit=1)
        instance.all_instigator_state()


def test_the_instance_keeps_its_connections_instead_of_opening_one_per_statement(
    instance: dg.DagsterInstance, empty_db_url: str
) -> None:
    assert isinstance(instance.get_ref().storage_data.rehydrate(DagsterStorage), PooledPostgresStorage)
    _storage_work(instance)  # warm: each storage opens its pool
    before = ended_sessions(empty_db_url)
    _storage_work(instance)
    # dagster-postgres's own NullPool: OPERATIONS backends started and ended. Pooled: none end (the
    # margin is for the counting connections themselves and the odd overflow connection).
    assert ended_sessions(empty_db_url) - before < POOL_SIZE + 3


def test_a_connection_postgres_ended_is_replaced_not_failed(
    instance: dg.DagsterInstance, empty_db_url: str
) -> None:
    _storage_work(instance)
    # As after a Postgres restart or an idle timeout: every pooled connection is closed server-side.
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert ended >= 1  # the pool's
    _storage_work(instance)  # pool_pre_ping finds the dead connections and opens new ones
    assert instance.get_runs() == []


def test_only_the_first_instance_of_a_process_looks_for_dagsters_tables(
    instance: dg.DagsterInstance, empty_db_url: str, tmp_path: Path
) -> None:
    # The code server builds an instance for each sensor tick that reads dynamic partitions.
    before = ended_sessions(empty_db_url)
    for _ in range(10):
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as again:
            assert again.get_runs(limit=1) == []
    # Looking for the tables was three connections each; now one pooled connection per instance.
    assert ended_sessions(empty_db_url) - before <= 10 + 2
