"""``states.py`` is the one list of states: the schema and the store's SQL must agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from batch_pipeline import states
from batch_pipeline.store.transitions import IllegalTransition, transition

STORE = Path(states.__file__).with_name("store")
# A state named in SQL: `state = 'x'`, `state <> 'x'`, `SET state = 'x'`, `state IN ('x', 'y')`.
STATE_EQ = re.compile(r"state\s*(?:=|<>|!=)\s*'(\w+)'", re.I)
STATE_IN = re.compile(r"state\s+IN\s*\(([^)]*)\)", re.I)
QUOTED = re.compile(r"'(\w+)'")


def check_constraint(conn: psycopg.Connection, name: str) -> set[str]:
    definition = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s", (name,)
    ).fetchone()[0]
    return set(QUOTED.findall(definition))


def test_the_schema_allows_exactly_these_states(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        assert check_constraint(conn, "batches_state_check") == set(states.EVERY_BATCH_STATE)
        assert check_constraint(conn, "requests_state_check") == set(states.REQUEST_STATES)
        assert check_constraint(conn, "delivery_attempts_outcome_check") == set(states.ATTEMPT_OUTCOMES)


def test_the_store_sql_names_only_known_states() -> None:
    known = set(states.EVERY_BATCH_STATE) | set(states.REQUEST_STATES)
    named: dict[str, set[str]] = {}
    for path in STORE.glob("*.py"):
        text = path.read_text()
        found = set(STATE_EQ.findall(text))
        for group in STATE_IN.findall(text):
            found |= set(QUOTED.findall(group))
        named[path.name] = found
    assert set().union(*named.values()), "the patterns found no state at all: they are broken"
    assert {name: found - known for name, found in named.items() if found - known} == {}


def test_every_group_holds_known_states() -> None:
    batch, request = set(states.EVERY_BATCH_STATE), set(states.REQUEST_STATES)
    for group in (
        states.BEFORE_OPENAI,
        states.CREATABLE,
        states.AT_OPENAI,
        states.FINISHED_DELIVERY,
        states.DELIVERABLE,
        states.FINISHED,
        states.FILES_NOT_NEEDED,
        states.UPLOAD_WORKING,
        states.RESULTS_WORKING,
    ):
        assert set(group) <= batch, group
    for group in (
        states.CANCELLABLE_REQUESTS,
        states.RESTARTABLE_REQUESTS,
        states.REDELIVERABLE_REQUESTS,
        *states.REDELIVER_BATCH_REQUESTS.values(),
    ):
        assert set(group) <= request, group
    assert {s for pair in states.ALLOWED_BATCH_MOVES for s in pair} <= batch


def test_a_move_the_state_machine_does_not_allow_is_refused_before_any_sql(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        with pytest.raises(IllegalTransition, match="delivered"):
            transition(conn, 1, ("delivered",), "uploading", "not a move a batch makes")
        # Staying in a state is never a move: allowed whatever the table says.
        assert transition(conn, 1, ("uploading",), "uploading", "no such batch") is None
