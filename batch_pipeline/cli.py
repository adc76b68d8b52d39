"""``batchman``: the console script behind the Makefile (up, api, migrate, simulator, …)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from batch_pipeline.config import ConfigError, Settings, exposure_error, get_settings, is_loopback
from batch_pipeline.observability.logs import configure_logging
from batch_pipeline.observability.metrics import start_multiprocess_dir
from batch_pipeline.runtime.supervisor import STOP_SIGNALS, StopRequested, raise_on_stop_signals

log = logging.getLogger("batchman")

SIM_MODE_BANNER = """
************************************************************************
*  SIMULATOR MODE: OPENAI_API_KEY is not set.                          *
*  Batches go to the built-in OpenAI Batch API simulator on :{port:<5}     *
*  No request reaches OpenAI and nothing is billed. Results are fake.  *
************************************************************************"""


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The app database URL: DATABASE_URL, else an embedded Postgres kept running for the block."""
    if settings.database_url:
        yield settings.database_url
        return
    from batch_pipeline.runtime.embedded_postgres import EmbeddedPostgres

    with EmbeddedPostgres(settings.data_dir) as pg:
        yield pg.url()


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from batch_pipeline.store.migrate import migrate

    with database(settings) as dsn:
        applied = migrate(dsn)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from batch_pipeline.store.migrate import migrate

    with database(settings) as dsn:
        migrate(dsn)
        os.environ["DATABASE_URL"] = dsn
        # The factory below reads get_settings(): afresh in a spawned worker, but with --workers 1 in
        # this process, where main() cached them before DATABASE_URL held the embedded server's URL.
        get_settings.cache_clear()
        if args.workers > 1:  # the workers' counters are summed through files of this start's own
            start_multiprocess_dir()
        uvicorn.run(
            "intake_api.main:create_app",
            factory=True,
            host=args.host,
            port=settings.port,
            workers=args.workers,
            log_level="info",
            access_log=False,  # intake_api/request_log.py logs each request, with its id
            log_config=None,  # uvicorn's lines go through our handler (LOG_FORMAT)
            timeout_keep_alive=settings.api_keepalive_seconds,
        )
    return 0


def cmd_simulator(settings: Settings, args: argparse.Namespace) -> int:
    from batch_pipeline.simulator.app import serve
    from batch_pipeline.simulator.settings import SimulatorConfigError, load_settings

    try:
        sim_settings = load_settings()
    except SimulatorConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    host = args.host or sim_settings.host
    configure_logging(settings, access_log=True)  # its requests are logged by uvicorn, in LOG_FORMAT
    serve(host=host, port=args.port or settings.simulator_port, settings=sim_settings, log_config=None)
    return 0


def check_openai_key(settings: Settings) -> str | None:
    """One cheap authenticated call at start (list one file): a wrong or revoked key is said at once,
    loudly, instead of when the first batch is refused. Returns the problem, or None. Never stops the
    start: OpenAI may be down for a moment, and batches wait for a refused key anyway."""
    if settings.simulator_mode:
        return None
    import openai

    from batch_pipeline import openai_client as oai

    try:
        with oai.sync_client(settings, timeout=10.0, max_retries=0) as client:
            client.files.list(limit=1)
    except openai.APIStatusError as exc:
        if exc.status_code in (401, 403):
            problem = (
                f"OpenAI refused OPENAI_API_KEY ({oai.refusal(exc)[1]}): batches will wait until it is fixed"
            )
            log.error(problem)
            return problem
        log.warning("OpenAI answered the start-up check with %s; carrying on", exc.status_code)
    except openai.APIError as exc:
        log.warning("OpenAI could not be reached at start-up (%s); carrying on", exc)
    return None


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from batch_pipeline.store.migrate import migrate

    check_openai_key(settings)
    with database(settings) as dsn:
        migrate(dsn)
        env = {**os.environ, "DATABASE_URL": dsn}
        if not settings.database_url and not settings.dagster_database_url:
            # The API's readiness reads the daemon's heartbeats there (as runtime/dagster_processes.py).
            env["DAGSTER_DATABASE_URL"] = _embedded_dagster_url(dsn)
        return _supervise(settings, args, env, dsn)


def _embedded_dagster_url(dsn: str) -> str:
    from batch_pipeline.db import dagster_storage_url
    from batch_pipeline.runtime.embedded_postgres import DB_FOR_DAGSTER

    return dagster_storage_url(dsn, DB_FOR_DAGSTER)


def _supervise(settings: Settings, args: argparse.Namespace, env: dict[str, str], dsn: str) -> int:
    """Start every process of the service and wait for them; the exit code of ``up``."""
    from batch_pipeline.runtime.dagster_processes import start_dagster
    from batch_pipeline.runtime.supervisor import Supervisor, batchman_argv

    # In a `with`, so children started before a stop signal (or a failed start) are stopped too.
    with Supervisor(env) as sup:
        if settings.simulator_mode:
            log.warning(SIM_MODE_BANNER.format(port=settings.simulator_port))
            env["OPENAI_BASE_URL"] = settings.openai_client_base_url
            # Its batches and files must outlive a restart, as our database does.
            if not env.get("SIMULATOR_DATA_DIR", "").strip():
                env["SIMULATOR_DATA_DIR"] = str(settings.data_dir.resolve() / "simulator")
            sup.start("simulator", batchman_argv("simulator", "--host", "127.0.0.1"))
        sup.start("api", batchman_argv("api", "--host", args.host))
        env.pop("DAGSTER_HOME", None)  # `up` always uses its own, under DATA_DIR
        start_dagster(sup, settings, env, dsn, project_root() / "dagster.yaml")
        if settings.rabbitmq_url and settings.rabbitmq_input_queue:
            sup.start("rabbitmq-consumer", batchman_argv("consumer"))
        log.info("intake API and UI on http://localhost:%s", settings.port)
        log.info("Dagster UI on http://localhost:%s/dagster (behind the UI's login)", settings.port)
        return sup.wait()


def project_root() -> Path:
    """The checkout holding dagster.yaml and workspace.yaml (the package is installed editable)."""
    return Path(__file__).resolve().parent.parent


def cmd_consumer(settings: Settings, _: argparse.Namespace) -> int:
    from batch_pipeline.intake.rabbitmq import main as consumer_main

    return consumer_main() or 0


def dagster_role(settings: Settings, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one Dagster process of the image (see ``cmd_dagster``)."""
    from batch_pipeline.runtime import dagster_processes as dp

    if not settings.database_url:
        raise ConfigError(f"{args.command} needs DATABASE_URL (an embedded Postgres is for `batchman up`)")
    env = dict(os.environ)
    dp.dagster_env(settings, env, settings.database_url, project_root() / "dagster.yaml")
    if args.command == "dagster-code-server":
        return dp.code_server_argv(args.host, args.port, settings.log_format), env
    workspace = Path(args.workspace) if args.workspace else project_root() / "workspace.yaml"
    if args.command == "dagster-daemon":
        return dp.daemon_argv(workspace, settings.log_format), env
    host, port = args.host or settings.dagster_host, args.port or settings.dagster_port
    return dp.webserver_argv(host, port, workspace, settings.log_format), env


def cmd_dagster(settings: Settings, args: argparse.Namespace) -> int:
    """One Dagster process in the foreground (a container's role): exec'd, so stop signals reach it."""
    try:
        argv, env = dagster_role(settings, args)
    except ConfigError as exc:
        print(f"batchman: {exc}", file=sys.stderr)
        return 2
    os.execve(argv[0], argv, env)  # never returns


# Commands that may start an embedded Postgres: a stop signal must unwind them so that it is stopped.
STOPPED_BY_UNWINDING = ("up", "api", "migrate")
# Services, for which a stop on request is their normal end (exit 0, as `up` after start-up always had).
SERVICES = ("up", "api")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchman", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything (API, UI, simulator when no key, Dagster)")
    up.add_argument("--host", default=None, help="interface of the API (default HOST, 127.0.0.1)")
    up.set_defaults(func=cmd_up)
    sub.add_parser("migrate", help="apply pending database migrations").set_defaults(func=cmd_migrate)
    api = sub.add_parser("api", help="run the intake API (uvicorn)")
    api.add_argument("--host", default=None, help="interface to listen on (default HOST, 127.0.0.1)")
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(func=cmd_api)
    sub.add_parser("consumer", help="run the RabbitMQ intake consumer").set_defaults(func=cmd_consumer)
    sim = sub.add_parser("simulator", help="run the OpenAI Batch API simulator")
    sim.add_argument("--host", default=None, help="interface to bind (default SIMULATOR_HOST, 127.0.0.1)")
    sim.add_argument("--port", type=int, default=None)
    sim.set_defaults(func=cmd_simulator)
    _add_dagster_roles(sub)
    return parser


def _add_dagster_roles(sub: argparse._SubParsersAction) -> None:
    """The Dagster processes one by one, for containers (``up`` starts them all itself)."""
    from batch_pipeline.runtime.dagster_processes import CODE_SERVER_PORT

    code = sub.add_parser("dagster-code-server", help="serve the Dagster definitions over gRPC")
    code.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    code.add_argument("--port", type=int, default=CODE_SERVER_PORT)
    web = sub.add_parser("dagster-webserver", help="run the Dagster UI (served by the API at /dagster)")
    web.add_argument("--host", default=None, help="interface to bind (default DAGSTER_HOST)")
    web.add_argument("--port", type=int, default=None, help="port (default DAGSTER_PORT)")
    daemon = sub.add_parser("dagster-daemon", help="run the Dagster daemon (sensors, run queue); one only")
    for role in (web, daemon):
        role.add_argument("--workspace", default=None, help="workspace.yaml (default: the checkout's)")
    for role in (code, web, daemon):
        role.set_defaults(func=cmd_dagster)


def main(argv: list[str] | None = None) -> int:
    configure_logging(None)  # text until the settings are read (a bad one is reported through it)
    args = build_parser().parse_args(argv)
    if args.command not in STOPPED_BY_UNWINDING:
        return _run(args)
    # Before anything starts: a SIGTERM's default action kills us without running any cleanup.
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    raise_on_stop_signals()
    try:
        return _run(args)
    except StopRequested as stop:
        log.info("stopped by %s", stop)
        # A one-shot command cut short did not do its job; shells report that as 128 + the signal.
        return 0 if args.command in SERVICES else 128 + stop.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"batchman: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)  # LOG_FORMAT for this process; children read it from the environment
    if args.command in SERVICES:
        args.host = args.host or settings.host
        if error := exposure_error(settings, args.host):
            print(f"batchman: {error}", file=sys.stderr)
            return 2
        if not is_loopback(args.host) and settings.api_token is None:
            log.warning("ALLOW_UNAUTHENTICATED: the API on %s answers anyone without a token", args.host)
    return args.func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
