"""``dagster-daemon`` whose sensor loop wakes every second instead of every 5 s.

Dagster's sensor daemon evaluates the due sensors, then sleeps until 5 s have passed since the loop
began (``MIN_INTERVAL_LOOP_TIME``, not a setting). A sensor's ``minimum_interval_seconds`` only spaces
its ticks within that loop, so a 1 s sensor ticked every 5 s, and a 5 s sensor whose interval had not
quite elapsed when the loop came round waited for the next loop: up to 10 s. Every stage waited that
long before its run was even requested. With a 1 s loop each sensor ticks within a second of its
interval. A loop that finds no sensor due costs one read of the sensor states.

``batchman up`` and ``batchman dagster-daemon`` start the daemon through this module
(``runtime/dagster_processes.py``); its arguments are ``dagster-daemon``'s own.
"""

from __future__ import annotations

import sys

from dagster._daemon import sensor as _sensor_daemon
from dagster._daemon.cli import main as _daemon_main

_LOOP_SECONDS = 1


def run() -> int:
    # Fail loudly when an upgrade renames the constant: a silent miss would bring back 5 s loops.
    if not isinstance(getattr(_sensor_daemon, "MIN_INTERVAL_LOOP_TIME", None), (int, float)):
        raise RuntimeError("dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME is gone: review defs/daemon.py")
    _sensor_daemon.MIN_INTERVAL_LOOP_TIME = _LOOP_SECONDS
    sys.argv[0] = "dagster-daemon"
    return _daemon_main()


if __name__ == "__main__":
    sys.exit(run())
