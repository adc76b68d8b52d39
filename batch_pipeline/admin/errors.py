"""Why an operator action was refused; the API turns each into its own status and error code.

Raised before anything changed (or after a transaction that changed nothing), so a caller may simply
report them.
"""

from __future__ import annotations

from collections.abc import Iterable


class BatchNotFound(LookupError):
    def __init__(self, batch_id: int) -> None:
        super().__init__(f"No batch found with id={batch_id}")


class RequestNotFound(LookupError):
    def __init__(self, custom_id: str) -> None:
        super().__init__(f"No request found with custom_id={custom_id}")


class InvalidBatchState(RuntimeError):
    """The batch is in a state the action does not apply to (it may have moved on meanwhile)."""

    def __init__(self, batch_id: int, state: str, action: str, allowed: Iterable[str]) -> None:
        super().__init__(
            f"Batch {batch_id} cannot be {action}: it is in state {state} (allowed: {', '.join(allowed)})"
        )
        self.state = state


class NotRedeliverable(RuntimeError):
    """A batch or request has no stored result to send again (yet), or is in a state that forbids it."""


class OpenAICallFailed(RuntimeError):
    """OpenAI (or the network to it) refused an action; nothing was changed on our side."""


class FileNotAvailable(LookupError):
    """A batch exists but the file asked for does not: not written yet, none of that kind, or deleted."""
