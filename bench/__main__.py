"""``python -m bench [name ...]``: run the named benchmarks (default: all in BENCHES that exist).

``soak`` and ``soak_e2e`` (``make soak``, ``make bench-e2e``) run the whole stack for minutes each, so
they run only when named."""

from __future__ import annotations

import importlib
import sys

BENCHES = ("intake", "hostile", "pipeline", "delivery", "ui", "linear")
ON_REQUEST = ("soak", "soak_e2e", "orchestration", "sensors")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            print(f"bench.{name}: not present, skipped")
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
