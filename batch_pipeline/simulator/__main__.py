"""``python -m batch_pipeline.simulator [--host H] [--port P]``: run the simulator in the foreground."""

from __future__ import annotations

import argparse
import sys

from .app import serve
from .settings import SimulatorConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings()
    except SimulatorConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m batch_pipeline.simulator", description=__doc__)
    parser.add_argument("--host", default=settings.host, help="interface to bind (SIMULATOR_HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help="port to bind (SIMULATOR_PORT)")
    args = parser.parse_args(argv)
    serve(args.host, args.port, settings=settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
