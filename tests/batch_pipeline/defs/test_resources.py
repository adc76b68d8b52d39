"""The Dagster resources are built from ``Settings`` and take no run config: a run launched from the UI
cannot point them elsewhere or change a setting, and no secret is part of what the UI is shown."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value

from batch_pipeline.defs.definitions import build_definitions
from tests.conftest import make_settings

SECRETS = {
    "openai_api_key": "sk-secret-key-that-must-not-leak",
    "api_token": "api-token-that-must-not-leak",
    "webhook_signing_secret": "whsec_c2VjcmV0LXNpZ25pbmcta2V5LW11c3Qtbm90LWxlYWs=",
}
RABBITMQ_PASSWORD = "rabbit-password-that-must-not-leak"


@pytest.fixture
def defs(tmp_path: Path) -> dg.Definitions:
    settings = make_settings(
        tmp_path,
        database_url="postgresql://app:db-password-that-must-not-leak@127.0.0.1:5432/app",
        rabbitmq_url=f"amqp://user:{RABBITMQ_PASSWORD}@127.0.0.1:5672/%2F",
        **SECRETS,
    )
    return build_definitions(settings)


def test_no_secret_is_in_the_code_location_snapshot(defs: dg.Definitions) -> None:
    snapshot = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
    for secret in [*SECRETS.values(), RABBITMQ_PASSWORD, "db-password-that-must-not-leak"]:
        assert secret not in snapshot
    assert "upload_job" in snapshot  # the snapshot is the real one, not an empty shell


@pytest.mark.parametrize(
    "resource_config",
    [
        {
            "openai": {
                "config": {"base_url": "http://attacker.example/v1", "api_key": {"env": "OPENAI_API_KEY"}}
            }
        },
        {"settings": {"config": {"retention_days": 0}}},
        {"postgres": {"config": {"dsn": "postgresql://attacker.example/x"}}},
    ],
    ids=["openai-base-url", "retention", "postgres-dsn"],
)
def test_run_config_cannot_reconfigure_a_resource(defs: dg.Definitions, resource_config: dict) -> None:
    job = defs.resolve_job_def("cleanup_job")
    with pytest.raises(dg.DagsterInvalidConfigError):
        job.execute_in_process(
            run_config={"resources": resource_config}, instance=dg.DagsterInstance.ephemeral()
        )
