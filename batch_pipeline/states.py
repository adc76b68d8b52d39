"""Every state a batch or a request can be in, the groups the code acts on, and the moves between them.

The one place these names are written in Python. The database holds the same names (CHECK constraints
in ``store/migrations``; single states as literals in ``store/`` SQL, where partial indexes need
them); ``tests/batch_pipeline/test_states.py`` checks both against this module.

A batch::

    ready ─► uploading ─► uploaded ─► openai_processing ─► openai_completed ─► downloading
               │              │  ▲          │      │                             │
               │              ▼  │          │      ▼                             ▼
               │      waiting_for_capacity  │   cancelling ─► (openai_completed)  ready_to_deliver
               ▼                            ▼                                     │
        cancelled / resubmitted / openai_completed (refused for good)             ▼
                                                  delivered / partially_delivered / delivery_failed
                                                              ◄── delivering ◄───┘

A request: pending ─► openai_processing ─► openai_processed ─► delivering ─► delivered | delivery_failed,
or failed / expired / cancelled on the way; a retried line goes back to pending (a new batch).
"""

from __future__ import annotations

# --- batches ------------------------------------------------------------------------------------------

EVERY_BATCH_STATE = (
    "ready", "uploading", "uploaded", "waiting_for_capacity", "openai_processing", "cancelling",
    "openai_completed", "downloading", "ready_to_deliver", "delivering", "delivered",
    "partially_delivered", "delivery_failed", "failed", "cancelled", "resubmitted",
)  # fmt: skip

# Before OpenAI has the batch: what an upload run may claim, and what a cancel stops right here.
BEFORE_OPENAI = ("ready", "uploading", "uploaded", "waiting_for_capacity")
# Uploaded (an input file exists): the batch may be created at OpenAI once its model has headroom.
CREATABLE = ("uploaded", "waiting_for_capacity")
# OpenAI may still be working: these batches' tokens count against the model's queue limit.
AT_OPENAI = ("openai_processing", "cancelling")
# Delivery is over (whatever its outcome); a redelivery may start it again.
FINISHED_DELIVERY = ("delivered", "partially_delivered", "delivery_failed")
# States a batch may (re)enter 'delivering' from.
DELIVERABLE = ("ready_to_deliver", "delivering", *FINISHED_DELIVERY)
# Nobody acts on these any more: retention counts from here, and they may be deleted.
FINISHED = (*FINISHED_DELIVERY, "failed", "cancelled", "resubmitted")
# Results are stored (or the batch ended): its OpenAI files are no longer needed.
FILES_NOT_NEEDED = ("ready_to_deliver", "delivering", *FINISHED)
# A stage run that stopped without moving its batch on leaves it here; the sensors relaunch it.
UPLOAD_WORKING = ("uploading", "uploaded")
RESULTS_WORKING = ("downloading",)

# Every move a batch makes, as (from, to). Stages and operator actions move batches only along these;
# ``store.transitions`` records each one in ``batch_transitions``.
ALLOWED_BATCH_MOVES = frozenset(
    {
        ("ready", "uploading"),
        *((s, "uploading") for s in CREATABLE),  # re-upload: the input file is gone
        ("uploading", "uploaded"),
        ("uploaded", "waiting_for_capacity"),
        *((s, "openai_processing") for s in CREATABLE),
        *((s, "openai_completed") for s in BEFORE_OPENAI),  # refused for good: failed like at OpenAI
        *((s, "waiting_for_capacity") for s in BEFORE_OPENAI),  # our API key refused: wait for a fix
        *((s, "resubmitted") for s in BEFORE_OPENAI),  # nothing left to send
        *((s, "cancelled") for s in BEFORE_OPENAI),
        ("openai_processing", "cancelling"),
        *((s, "openai_completed") for s in AT_OPENAI),
        *((s, "waiting_for_capacity") for s in AT_OPENAI),  # token_limit_exceeded: wait, go again
        ("openai_completed", "downloading"),
        ("downloading", "ready_to_deliver"),
        ("downloading", "resubmitted"),
        *((s, "delivering") for s in DELIVERABLE),
        *(("delivering", s) for s in FINISHED_DELIVERY),
        ("failed", "resubmitted"),  # restart: its requests go back to the queue
    }
)

# Why a batch waits in 'waiting_for_capacity' while OpenAI refuses our API key (401/403).
WAITING_FOR_CREDENTIALS = "openai_unauthorized"

# --- requests -----------------------------------------------------------------------------------------

REQUEST_STATES = (
    "pending", "openai_processing", "openai_processed", "delivering", "delivered", "failed",
    "delivery_failed", "expired", "cancelled",
)  # fmt: skip

# A cancelled batch's requests that had not run: cancelled with it.
CANCELLABLE_REQUESTS = ("pending", "openai_processing")
# A failed batch's requests whose client has received nothing yet. 'failed' counts only without a
# result (with one, the error line was or will be delivered). openai_processed ones go back too:
# nothing delivers the results of a failed batch, and a client must never wait forever.
RESTARTABLE_REQUESTS = ("pending", "openai_processing", "openai_processed", "expired")
# A stored result may be sent again from these (the Elixir service's list).
REDELIVERABLE_REQUESTS = (
    "openai_processed",
    "delivered",
    "failed",
    "delivery_failed",
    "expired",
    "cancelled",
)
# What a batch redelivery resets, per its ``only`` argument.
REDELIVER_BATCH_REQUESTS = {
    "failed": ("delivery_failed",),
    "all": ("delivered", "failed", "delivery_failed", "openai_processed"),
}

# --- delivery attempts --------------------------------------------------------------------------------

# The outcome of one attempt (``delivery_attempts.outcome``): the Elixir service's codes, plus
# blocked_by_policy (our SSRF policy) and rabbitmq_not_configured.
SUCCESS = "success"
HTTP_STATUS_NOT_2XX = "http_status_not_2xx"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
QUEUE_NOT_FOUND = "queue_not_found"
BLOCKED_BY_POLICY = "blocked_by_policy"
OUTCOME_NO_RABBITMQ = "rabbitmq_not_configured"
OTHER = "other"
ATTEMPT_OUTCOMES = (
    SUCCESS, HTTP_STATUS_NOT_2XX, TIMEOUT, CONNECTION_ERROR, QUEUE_NOT_FOUND, BLOCKED_BY_POLICY,
    OUTCOME_NO_RABBITMQ, OTHER,
)  # fmt: skip
