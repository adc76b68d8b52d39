"""Simulator state: files, batches, statistics and the clock, behind one lock, optionally persisted.

File contents live on disk under the data directory; everything else is small and kept in memory. When
``SIMULATOR_DATA_DIR`` is set (and ``SIMULATOR_PERSIST`` is on) the state is also written to
``state.json`` after each change, so a restarted simulator still knows the batches a client submitted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from .clock import SimClock
from .errors import not_found
from .ids import new_file_id
from .jsonl import FileSummary
from .records import BatchRecord, FileRecord
from .settings import RuntimeFaults, SimulatorSettings
from .stats import Stats

logger = logging.getLogger(__name__)
_STATE_VERSION = 1


class Store:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.clock = SimClock(frozen=settings.freeze_clock)
        self.faults: RuntimeFaults = settings.fault_config()
        self.temporary = settings.data_dir is None
        self.data_dir: Path = (
            Path(tempfile.mkdtemp(prefix="batchman-sim-")) if settings.data_dir is None else settings.data_dir
        )
        # A temp dir goes away on close() or, for an app that was never served, at interpreter exit.
        self._cleanup = (
            weakref.finalize(self, shutil.rmtree, self.data_dir, ignore_errors=True)
            if self.temporary
            else None
        )
        self.files_dir = self.data_dir / "files"
        self.batches_dir = self.data_dir / "batches"
        self.spool_dir = self.data_dir / "spool"
        for folder in (self.files_dir, self.batches_dir, self.spool_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.spool_dir.iterdir():  # half-written uploads of a previous run
            leftover.unlink(missing_ok=True)
        self.persist = settings.persist and not self.temporary
        self.files: dict[str, FileRecord] = {}
        self.batches: dict[str, BatchRecord] = {}
        self.stats = Stats()
        self._seq = 0
        if self.persist:
            self._load()

    # -- bookkeeping --------------------------------------------------------------------------------
    def next_seq(self) -> int:
        with self.lock:
            self._seq += 1
            return self._seq

    def now(self) -> float:
        return self.clock.now()

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()

    def reset(self) -> None:
        """Forget everything: files, batches, statistics, clock offset and runtime fault changes."""
        with self.lock:
            self.files.clear()
            self.batches.clear()
            self.stats = Stats()
            self.faults = self.settings.fault_config()
            self.clock.reset()
            for folder in (self.files_dir, self.batches_dir, self.spool_dir):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True, exist_ok=True)
            self.save()

    # -- files --------------------------------------------------------------------------------------
    def add_file(
        self,
        source: Path,
        *,
        filename: str,
        purpose: str,
        size: int,
        expires_seconds: int | None,
        summary: FileSummary | None = None,
        created_at: int | None = None,
        file_id: str | None = None,
    ) -> FileRecord:
        """Move ``source`` into the file store and register it."""
        file_id = file_id or new_file_id()
        target = self.files_dir / f"{file_id}.jsonl"
        os.replace(source, target)
        if summary is not None and self.persist:
            (self.files_dir / f"{file_id}.summary.json").write_text(json.dumps(summary.to_dict()))
        with self.lock:
            created = int(self.now()) if created_at is None else created_at
            record = FileRecord(
                id=file_id,
                filename=filename,
                purpose=purpose,
                bytes=size,
                created_at=created,
                expires_at=created + expires_seconds if expires_seconds is not None else None,
                path=str(target),
                seq=self.next_seq(),
                summary=summary,
            )
            self.files[file_id] = record
            if purpose != "batch_output":
                self.stats.files_uploaded += 1
            self.save()
        return record

    def get_file(self, file_id: str) -> FileRecord:
        """A live file; deleted and expired files answer 404 like OpenAI, whose files vanish on expiry."""
        with self.lock:
            record = self.files.get(file_id)
            if record is None or not record.visible(self.now()):
                if record is not None:
                    record.file_path.unlink(missing_ok=True)  # reclaim the space of an expired file
                raise not_found("File", file_id)
            return record

    def delete_file(self, file_id: str) -> FileRecord:
        with self.lock:
            record = self.get_file(file_id)
            record.deleted = True
            record.file_path.unlink(missing_ok=True)
            self.stats.files_deleted += 1
            self.save()
            return record

    def expire_file(self, file_id: str) -> FileRecord:
        with self.lock:
            record = self.get_file(file_id)
            record.expires_at = int(self.now())
            self.save()
            return record

    def list_files(
        self, *, purpose: str | None, limit: int, after: str | None, order: str
    ) -> tuple[list[FileRecord], bool]:
        with self.lock:
            now = self.now()
            ordered = sorted(
                self.files.values(), key=lambda f: (f.created_at, f.seq), reverse=order == "desc"
            )
            return paginate(ordered, after, limit, lambda f: f.visible(now) and purpose in (None, f.purpose))

    # -- persistence --------------------------------------------------------------------------------
    def save(self) -> None:
        if not self.persist:
            return
        with self.lock:
            state = {
                "version": _STATE_VERSION,
                "seq": self._seq,
                "clock": self.clock.snapshot(),
                "files": [f.to_state() for f in self.files.values()],
                "batches": [b.to_state() for b in self.batches.values()],
                "stats": self.stats.to_json(),
            }
            path = self.data_dir / "state.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)

    def _load(self) -> None:
        path = self.data_dir / "state.json"
        if not path.exists():
            return
        try:
            state = json.loads(path.read_text())
            if state.get("version") != _STATE_VERSION:
                raise ValueError(f"unknown state version {state.get('version')!r}")
            for data in state["files"]:
                sidecar = self.files_dir / f"{data['id']}.summary.json"
                summary = FileSummary.from_dict(json.loads(sidecar.read_text())) if sidecar.exists() else None
                self.files[data["id"]] = FileRecord.from_state(data, summary)
            for data in state["batches"]:
                self.batches[data["id"]] = BatchRecord.from_state(data)
            self.stats = Stats.from_json(state.get("stats", {}))
            self._seq = state.get("seq", 0)
            self.clock.restore(state.get("clock", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A damaged state file must not keep the simulator from starting; keep it for inspection.
            logger.warning("simulator state %s unreadable (%s); starting empty", path, exc)
            os.replace(path, path.with_suffix(".json.corrupt"))
            self.files.clear()
            self.batches.clear()
            self.stats = Stats()
            self._seq = 0


def paginate(ordered: list[Any], after: str | None, limit: int, keep: Any) -> tuple[list[Any], bool]:
    """Cursor pagination over an ordered list; the cursor may name an object that is no longer visible."""
    start = 0
    if after is not None:
        position = next((i for i, item in enumerate(ordered) if item.id == after), None)
        if position is None:
            return [], False
        start = position + 1
    page: list[Any] = []
    for item in ordered[start:]:
        if keep(item):
            if len(page) == limit:
                return page, True
            page.append(item)
    return page, False
