"""The simulator clock: wall time plus an offset that ``POST /_sim/advance`` moves forward.

Batch progress is computed from this clock on every read, so advancing it is all a test needs to push a
batch through its lifecycle. A frozen clock (``SIMULATOR_FREEZE_CLOCK``) removes wall-clock luck entirely.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class SimClock:
    def __init__(self, frozen: bool = False) -> None:
        self._lock = threading.Lock()
        self._frozen = frozen
        self._base = time.time()
        self._offset = 0.0

    @property
    def frozen(self) -> bool:
        return self._frozen

    def now(self) -> float:
        with self._lock:
            base = self._base if self._frozen else time.time()
            return base + self._offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the simulator clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()

    def reset(self) -> None:
        with self._lock:
            self._base = time.time()
            self._offset = 0.0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"frozen": self._frozen, "base": self._base, "offset": self._offset}

    def restore(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._offset = float(data.get("offset", 0.0))
            # A frozen clock resumes where it stopped; a wall clock keeps its offset but not its old base,
            # so time never runs backwards across a restart.
            if self._frozen and data.get("frozen"):
                self._base = float(data.get("base", self._base))
