"""``create_app`` start-up: what it does once per process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, sys
    from intake_api.main import create_app

    async def start_and_stop(app):
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count(), len(gc.get_objects())

    print(gc.get_freeze_count())
    print(*asyncio.run(start_and_stop(create_app(database_url=sys.argv[1]))))
    print(*asyncio.run(start_and_stop(create_app(database_url=sys.argv[1]))))
    """
)


def test_start_up_objects_are_frozen_once_per_process(db_url: str) -> None:
    # A fresh process: the freeze is process-wide, and other tests in this one have started apps.
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, db_url], capture_output=True, text=True, timeout=120, check=True
    )
    before, (first_frozen, first_tracked), (second_frozen, second_tracked) = (
        [int(n) for n in line.split()] for line in out.stdout.splitlines()
    )
    # Python 3.12 starts with some objects frozen of its own; 3.11 with none.
    assert first_frozen > before[0] + 10_000  # modules, routes and schemas, out of the collector's sight
    assert first_tracked < 200  # next to almost nothing left to walk
    # A second app in the same process freezes nothing more: its own objects stay collectable.
    assert abs(second_frozen - first_frozen) < 1_000
    assert second_tracked > first_tracked + 100
