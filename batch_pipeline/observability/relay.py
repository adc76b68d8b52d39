"""``LOG_FORMAT=json`` for the Dagster processes: every line of a process tree as one of our JSON lines.

The Dagster webserver, daemon and code server are Dagster's own programs, and so are the run workers
they start: their lines come from Dagster's handlers (its JSON has ``event`` and ``timestamp`` keys,
a run's console logger writes text) and from anything else that writes to stderr (warnings,
tracebacks). ``python -m batch_pipeline.observability.relay NAME -- ARGV...`` runs ARGV in this very
process (``exec``: same pid, so a supervisor's or container runtime's signals and exit code are the
program's own) with its stdout and stderr going into a pipe; a forked child reads that pipe and
writes each line to the original stderr as our JSON (``time``, ``level``, ``logger``, ``message``, and
``run_id``/``batch_id`` where the line names them), secrets masked. Lines that are ours already (the
code server and run workers load our code, which logs in our format) pass as they are.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn

import orjson

from batch_pipeline.observability.logs import CONTEXT_FIELDS, Scrubber, secret_values

# A Dagster run's console line: "2026-12-03 13:54:59 +0000 - dagster - INFO - job - <run id> - ...".
_CONSOLE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}) - (?P<logger>[\w.-]+) - (?P<level>[A-Z]+) - "
    r"(?P<message>.*)$"
)
_RUN_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
# The longest line passed on whole; longer ones are cut (a runaway print must not eat the memory).
_MAX_LINE = 1 << 20


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def to_json_line(line: str, name: str, scrub: Callable[[str], str]) -> str:
    """One output line of the program as one JSON object (``name`` is the logger of bare text)."""
    text = line.rstrip("\r\n")
    parsed: Any = None
    if text.startswith("{"):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed = None
    if isinstance(parsed, dict) and {"time", "level", "logger", "message"} <= parsed.keys():
        return text  # ours, written (and scrubbed) by our formatter in a process below
    if isinstance(parsed, dict) and "event" in parsed:  # Dagster's own JSON (structlog)
        out = {
            "time": parsed.get("timestamp") or _now(),
            "level": str(parsed.get("level", "info")).lower(),
            "logger": parsed.get("logger") or name,
            "message": scrub(str(parsed["event"])),
        }
        out.update({k: parsed[k] for k in CONTEXT_FIELDS if parsed.get(k) is not None})
        if parsed.get("exception"):
            out["exception"] = scrub(str(parsed["exception"]))
        return orjson.dumps(out, default=str).decode()
    if m := _CONSOLE.match(text):  # a run's console logger
        when = datetime.strptime(m["time"], "%Y-%m-%d %H:%M:%S %z").astimezone(UTC)
        out = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": m["level"].lower(),
            "logger": m["logger"],
            "message": scrub(m["message"]),
        }
        if run := _RUN_ID.search(m["message"]):
            out["run_id"] = run.group(0)
        return orjson.dumps(out).decode()
    return orjson.dumps({"time": _now(), "level": "info", "logger": name, "message": scrub(text)}).decode()


def relay(lines: Iterable[bytes], name: str, scrub: Callable[[str], str], out_fd: int = 2) -> None:
    for raw in lines:
        line = to_json_line(raw[:_MAX_LINE].decode("utf-8", "replace"), name, scrub)
        data = (line + "\n").encode()
        while data:
            data = data[os.write(out_fd, data) :]


def exec_relayed(argv: list[str], env: dict[str, str], name: str, scrub: Callable[[str], str]) -> NoReturn:
    """Become ``argv`` with its output relayed as JSON lines by a forked child (see the module doc)."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the relay: lives until every writer (the program, its children) is gone
        os.close(write_end)
        # A stop signal is for the program (a supervisor signals the whole group): its last lines,
        # written while it stops, are still relayed; the end of the pipe ends the relay.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = 0
        try:
            with os.fdopen(read_end, "rb") as pipe:
                relay(pipe, name, scrub)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    os.execve(argv[0], argv, env)


def relayed_argv(name: str, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` through the relay."""
    return [sys.executable, "-m", "batch_pipeline.observability.relay", name, "--", *argv]


def main(args: list[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if args is None else args)
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m batch_pipeline.observability.relay NAME -- PROGRAM [ARGS...]")
    from batch_pipeline.config import ConfigError, get_settings

    try:
        secrets = secret_values(get_settings())
    except ConfigError:
        secrets = []  # the program itself will say what is wrong with the settings
    exec_relayed(args[2:], dict(os.environ), args[0], Scrubber(secrets))


if __name__ == "__main__":
    main()
