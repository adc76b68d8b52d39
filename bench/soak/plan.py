"""What the soak sends: how many requests, through which door, for which endpoint and destination, and
which simulator faults are switched on."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

# (endpoint, model): three models on the three endpoints; one OpenAI batch group each.
GROUPS = (
    ("/v1/chat/completions", "gpt-4o-mini"),
    ("/v1/responses", "gpt-4.1-mini"),
    ("/v1/embeddings", "text-embedding-3-small"),
)
# The simulator's faults for the soak (docs/simulator.md). 10% of OpenAI API calls fail: half answer 429
# (with Retry-After 1 s), half 500; 2% of connections are dropped before an answer; one
# upload and one create lose their answer after the work was done (the crash-safe lookup must adopt
# them, not repeat them); 1% of result lines are server_errors (resubmitted by the pipeline).
FAULTS = {
    "SIMULATOR_HTTP_429_RATE": "0.05",
    "SIMULATOR_HTTP_500_RATE": "0.05",
    "SIMULATOR_DROP_RATE": "0.02",
    "SIMULATOR_RETRY_AFTER_SECONDS": "1",
    "SIMULATOR_LINE_SERVER_ERROR_RATE": "0.01",
}
DROP_RESPONSE_NEXT = {"files.create": 1, "batches.create": 1, "batches.cancel": 0}
# Batches finish at once: the soak measures our pipeline, not the simulator's pacing.
INSTANT = {
    "SIMULATOR_VALIDATING_SECONDS": "0",
    "SIMULATOR_IN_PROGRESS_SECONDS": "0",
    "SIMULATOR_FINALIZING_SECONDS": "0",
}
EXPIRE_MARKER = "expire_batch"  # simulator line marker added for the soak: its whole batch expires
INVALID_MARKER = "invalid_line"  # its batch fails validation; that line fails, the rest go again


@dataclass(frozen=True)
class Plan:
    total: int = 200_000
    faults: bool = True
    # Shares of the doors (the rest goes through bulk POSTs); 0 turns a door off.
    single_share: float = 0.01
    rabbit_share: float = 0.2
    bulk_call_items: int = 25_000
    single_concurrency: int = 16
    half_to_queue: bool = True  # else every result goes to the webhook receiver
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def singles(self) -> int:
        return int(self.total * self.single_share)

    @property
    def rabbit(self) -> int:
        return int(self.total * self.rabbit_share)

    @property
    def bulk(self) -> int:
        return self.total - self.singles - self.rabbit


def custom_id(plan: Plan, door: str, i: int) -> str:
    return f"soak-{plan.run_id}-{door}-{i}"


def make_request(
    plan: Plan, door: str, i: int, webhook_url: str, queue: str, marker: str | None = None
) -> dict:
    """Request ``i`` of a door: its group is i % 3, its destination (i // 3) % 2, so each group sends
    half its results to the webhook and half to the queue, whatever the door."""
    endpoint, model = GROUPS[i % 3]
    cid = custom_id(plan, door, i)
    text = f"Soak request {cid}: name one colour of the rainbow."
    if endpoint == "/v1/chat/completions":
        body: dict = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16}
    elif endpoint == "/v1/responses":
        body = {"model": model, "input": text, "max_output_tokens": 16}
    else:
        body = {"model": model, "input": text}
    if marker:
        body["x_sim_fault"] = marker
    if destination(plan, i) == "webhook":
        delivery = {"type": "webhook", "webhook_url": webhook_url}
    else:
        delivery = {"type": "rabbitmq", "rabbitmq_queue": queue}
    return {"custom_id": cid, "method": "POST", "url": endpoint, "body": body, "delivery_config": delivery}


def destination(plan: Plan, i: int) -> str:
    return "queue" if plan.half_to_queue and (i // 3) % 2 else "webhook"


def destination_of(plan: Plan, cid: str) -> str:
    """The sink a soak custom_id's result goes to (its index decides, see ``make_request``)."""
    return destination(plan, int(cid.rsplit("-", 1)[1]))
