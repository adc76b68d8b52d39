"""``batch_pipeline.admin.cancel`` against a real Postgres, for a batch OpenAI does not have yet. Cancel
at OpenAI (against the simulator) is tested over HTTP in ``tests/intake_api/test_batches_api.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_pipeline.admin import cancel as admin
from batch_pipeline.admin.errors import InvalidBatchState
from tests.batch_pipeline.admin.helpers import add_batch, add_requests, batch, query, run, transitions
from tests.conftest import make_settings

# --- cancel (no OpenAI involved) ----------------------------------------------------------------------


def test_cancel_before_openai_cancels_the_requests_too(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, database_url=db_url)
    ids = add_requests(db_url, 3)
    done = add_requests(db_url, 1, state="delivered")
    batch_id = add_batch(db_url, "waiting_for_capacity", ids + done)
    result = run(db_url, lambda conn: admin.cancel_batch(conn, settings, batch_id))
    assert result == {
        "id": batch_id,
        "state": "cancelled",
        "previous_state": "waiting_for_capacity",
        "cancelled_requests": 3,
    }
    states = query(db_url, "SELECT id, state FROM batchman.requests ORDER BY id")
    assert [r["state"] for r in states] == ["cancelled"] * 3 + ["delivered"]
    assert batch(db_url, batch_id)["completed_at"] is not None
    assert transitions(db_url, batch_id) == [
        ("waiting_for_capacity", "cancelled", "cancelled through the API")
    ]
    with pytest.raises(InvalidBatchState, match="state cancelled"):
        run(db_url, lambda conn: admin.cancel_batch(conn, settings, batch_id))
