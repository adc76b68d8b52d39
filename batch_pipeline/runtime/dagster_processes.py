"""The Dagster processes' command lines and environment, shared by ``batchman up`` (all of them under
one supervisor) and the one-process roles of the container image (``batchman dagster-webserver`` …).

Dagster is started as its own executables, never imported: only ``batch_pipeline.defs`` imports it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from batch_pipeline.config import Settings
from batch_pipeline.db import dagster_storage_url
from batch_pipeline.observability.relay import relayed_argv
from batch_pipeline.runtime.embedded_postgres import DB_FOR_DAGSTER
from batch_pipeline.runtime.supervisor import Supervisor

# The code location, as workspace.yaml names it; the gRPC code server serves the same one.
DEFS_MODULE = "batch_pipeline.defs.definitions"
DEFS_ATTRIBUTE = "defs"
# The name the local workspace.yaml gives the location (Dagster's default: module:attribute). The code
# server keeps it, so sensor and schedule state stored by `batchman up` still applies in containers.
LOCATION_NAME = f"{DEFS_MODULE}:{DEFS_ATTRIBUTE}"
CODE_SERVER_PORT = 4266
# dagster-daemon with a shorter sensor loop, and the code server whose run workers are forked from a
# warm process; named, not imported (only defs/ imports dagster).
DAEMON_MODULE = "batch_pipeline.defs.daemon"
CODE_SERVER_MODULE = "batch_pipeline.defs.code_server"
# The API serves the Dagster UI behind its login at this prefix (intake_api/ui/dagster_proxy.py).
WEBSERVER_PATH_PREFIX = "/dagster"
# The code server imports the definitions before it binds its socket (seconds; more on a busy box).
CODE_SERVER_START_SECONDS = 120


def dagster_bin(name: str) -> str:
    """A console script of this interpreter's environment (a venv need not be on PATH)."""
    return str(Path(sys.executable).parent / name)


def dagster_env(settings: Settings, env: dict[str, str], dsn: str, instance_yaml: Path) -> None:
    """Point ``env`` at one Dagster instance stored in Postgres (DAGSTER_HOME, DAGSTER_PG_URL).

    A DAGSTER_HOME already set (a container mounts its dagster.yaml there) is kept; otherwise it is
    DATA_DIR/dagster_home with a copy of ``instance_yaml``.
    """
    if not env.get("DAGSTER_HOME", "").strip():
        home = settings.data_dir.resolve() / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(instance_yaml, home / "dagster.yaml")
        env["DAGSTER_HOME"] = str(home)
    # Embedded Postgres: Dagster gets its own database. External: the same database; Dagster's
    # tables live in the public schema, ours in `batchman`.
    env["DAGSTER_PG_URL"] = settings.dagster_database_url or dagster_storage_url(
        dsn, DB_FOR_DAGSTER if not settings.database_url else None
    )


def _in_format(name: str, argv: list[str], log_format: str) -> list[str]:
    """LOG_FORMAT=json: Dagster's own JSON lines, and every line of the process tree (its run workers
    too) turned into ours by the relay (observability/relay.py)."""
    return relayed_argv(name, [*argv, "--log-format", "json"]) if log_format == "json" else argv


def webserver_argv(host: str, port: int, workspace: Path, log_format: str = "text") -> list[str]:
    argv = [
        dagster_bin("dagster-webserver"),
        *("-h", host, "-p", str(port), "-w", str(workspace)),
        *("--path-prefix", WEBSERVER_PATH_PREFIX),
    ]
    return _in_format("dagster-webserver", argv, log_format)


def daemon_argv(workspace: Path, log_format: str = "text") -> list[str]:
    """``dagster-daemon run`` with a 1 s sensor loop instead of Dagster's 5 s (``defs/daemon.py``)."""
    argv = [sys.executable, "-m", DAEMON_MODULE, "run", "-w", str(workspace)]
    return _in_format("dagster-daemon", argv, log_format)


def code_server_argv(
    host: str = "127.0.0.1", port: int | None = None, log_format: str = "text", socket: Path | None = None
) -> list[str]:
    """The definitions over gRPC, on a TCP port (Compose, Kubernetes) or a Unix socket (``batchman
    up``), with run workers forked from a process that has them imported (``defs/code_server.py``)."""
    where = ("--socket", str(socket)) if socket is not None else ("-h", host, "-p", str(port))
    argv = [
        sys.executable,
        *("-m", CODE_SERVER_MODULE, "api", "grpc", *where),
        *("-m", DEFS_MODULE, "-a", DEFS_ATTRIBUTE, "--location-name", LOCATION_NAME),
    ]
    return _in_format("dagster-code-server", argv, log_format)


def socket_workspace(socket: Path) -> str:
    """A workspace.yaml for a webserver and daemon that load the definitions from the code server on
    ``socket`` (they never import the project's code), under the location name of workspace.yaml."""
    return (
        "load_from:\n"
        "  - grpc_server:\n"
        f"      socket: {json.dumps(str(socket))}\n"
        f"      location_name: {json.dumps(LOCATION_NAME)}\n"
    )


def start_dagster(
    sup: Supervisor, settings: Settings, env: dict[str, str], dsn: str, instance_yaml: Path
) -> None:
    """``batchman up``'s Dagster: one code server, and a webserver and daemon that load the definitions
    from it, sharing one instance (DAGSTER_HOME) stored in Postgres."""
    dagster_env(settings, env, dsn, instance_yaml)
    fmt = settings.log_format
    # One code server for both (each would otherwise start its own), on a Unix socket: no port to
    # pick, and a path short enough for a socket's 107 characters wherever DATA_DIR is.
    socket = Path(sup.temp_dir("batchman-dagster-")) / "code.sock"
    sup.start("dagster-code-server", code_server_argv(socket=socket, log_format=fmt))
    workspace = Path(env["DAGSTER_HOME"]) / "workspace.yaml"
    workspace.write_text(socket_workspace(socket))
    # The daemon reads its workspace again only every 60 s: started before the server answers, it
    # would run no sensor for that long.
    sup.wait_for_socket("dagster-code-server", socket, CODE_SERVER_START_SECONDS)
    sup.start(
        "dagster-webserver", webserver_argv(settings.dagster_host, settings.dagster_port, workspace, fmt)
    )
    sup.start("dagster-daemon", daemon_argv(workspace, fmt))
