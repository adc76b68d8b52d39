"""``python -m bench [--no-write] [name ...]``: run the named benchmarks (default: all in BENCHES that
exist) and write each one's figures into its own subsection of docs/benchmarks.md's generated block
(``bench.report_file``), after it ran. ``--no-write`` or ``BENCH_NO_WRITE=1``: print only.

``soak`` and ``soak_e2e`` (``make soak``, ``make bench-e2e``) run the whole stack for minutes each, so
they run only when named."""

from __future__ import annotations

import importlib
import os
import sys
from datetime import UTC, datetime
from types import ModuleType

from bench import report_file

BENCHES = ("intake", "hostile", "pipeline", "delivery", "ui", "linear")
ON_REQUEST = ("soak", "soak_e2e", "orchestration", "sensors")


def _write(name: str, run: report_file.Run) -> None:
    figures = report_file.figures_of(name)
    if not figures:
        return
    section = report_file.render_section(name, figures, run)
    order = [report_file.heading(n) for n in BENCHES + ON_REQUEST]
    report_file.write(report_file.BENCHMARKS_MD, {report_file.heading(name): section}, order)
    print(f"bench.{name}: figures written to {report_file.BENCHMARKS_MD}", flush=True)


def run_one(name: str, module: ModuleType, write: bool) -> None:
    started, load_before = datetime.now(UTC), os.getloadavg()[0]
    report_file.begin(name)
    try:
        module.main()
    except SystemExit as exc:  # a bench that found a broken promise (the soak): its figures still count
        if write and exc.code:
            _write(name, _run(started, load_before, name, exc.code if isinstance(exc.code, int) else 1))
        raise
    if write:
        _write(name, _run(started, load_before, name, 0))


def _run(started: datetime, load_before: float, name: str, status: int) -> report_file.Run:
    return report_file.Run(
        started=started,
        finished=datetime.now(UTC),
        machine=report_file.machine(),
        load_before=load_before,
        load_after=os.getloadavg()[0],
        exit_status=status,
        notes=report_file.NOTES.get(name, []),
    )


def main(argv: list[str]) -> int:
    write = os.environ.get("BENCH_NO_WRITE", "") in ("", "0") and "--no-write" not in argv
    names = [a for a in argv if a != "--no-write"] or list(BENCHES)
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            print(f"bench.{name}: not present, skipped")
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        run_one(name, module, write)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
