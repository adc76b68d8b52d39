"""Intake service: validate and store submitted requests. One code path for HTTP, bulk and RabbitMQ."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from batch_pipeline.config import Settings
from batch_pipeline.model_limits import token_limit_for
from batch_pipeline.store import model_limits as limits_store
from batch_pipeline.store import requests as requests_store
from batch_pipeline.validation import Limits, NewRequest, RequestTooLarge, UrlPolicy, error, validate_request

# Overrides change rarely; re-reading them on every request would double the intake's queries.
OVERRIDES_TTL_SECONDS = 5.0


@dataclass
class Outcome:
    """What happened to one submitted item: accepted, duplicate, invalid or too_large."""

    status: str
    custom_id: str | None = None
    errors: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "custom_id": self.custom_id}
        if self.errors:
            out["errors"] = self.errors
        return out


@dataclass(frozen=True)
class Undecodable:
    """An item that was not even JSON (e.g. a bad NDJSON line); reported as invalid in its place."""

    detail: str


class IntakeService:
    def __init__(self, settings: Settings, url_policy: UrlPolicy | None = None) -> None:
        self.limits = Limits(
            custom_id_max_length=settings.custom_id_max_length,
            batch_max_bytes=settings.batch_max_bytes,
            token_safety_factor=settings.token_estimate_safety_factor,
        )
        self.url_policy = url_policy
        self._overrides: dict[str, int] = {}
        self._overrides_at = float("-inf")

    async def _token_overrides(self, conn: psycopg.AsyncConnection) -> dict[str, int]:
        if time.monotonic() - self._overrides_at > OVERRIDES_TTL_SECONDS:
            self._overrides = await limits_store.fetch_overrides(conn)
            self._overrides_at = time.monotonic()
        return self._overrides

    def invalidate_overrides(self) -> None:
        self._overrides_at = float("-inf")

    async def check(self, conn: psycopg.AsyncConnection, obj: Any, pointer: str = "") -> NewRequest | Outcome:
        """Validate one item; a ``NewRequest`` when it may be stored, else the ``Outcome`` to report."""
        custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
        custom_id = custom_id if isinstance(custom_id, str) else None
        try:
            checked = validate_request(obj, self.limits, pointer, self.url_policy)
        except RequestTooLarge as exc:
            return Outcome(
                "too_large",
                custom_id,
                [error(str(exc), pointer or "/", code="request_too_large", title="Request Too Large")],
            )
        if isinstance(checked, list):
            return Outcome("invalid", custom_id, checked)
        limit = token_limit_for(checked.model, await self._token_overrides(conn))
        if checked.estimated_tokens > limit:
            detail = (
                f"request is estimated at {checked.estimated_tokens} input tokens, over the "
                f"{limit}-token batch queue limit for {checked.model}"
            )
            return Outcome("invalid", custom_id, [error(detail, f"{pointer}/body", code="token_limit")])
        return checked

    async def submit(self, conn: psycopg.AsyncConnection, obj: Any) -> Outcome:
        checked = await self.check(conn, obj)
        if isinstance(checked, Outcome):
            return checked
        inserted = await requests_store.insert_request(conn, checked)
        return Outcome("accepted" if inserted else "duplicate", checked.custom_id)

    async def submit_bulk(self, conn: psycopg.AsyncConnection, objs: list[Any]) -> list[Outcome]:
        """Validate every item, store the valid ones in one transaction; one outcome per item, in order."""
        outcomes: list[Outcome | None] = [None] * len(objs)
        to_store: list[tuple[int, NewRequest]] = []
        seen: set[str] = set()
        for index, obj in enumerate(objs):
            if isinstance(obj, Undecodable):
                outcomes[index] = Outcome("invalid", None, [error(obj.detail, f"/{index}")])
                continue
            checked = await self.check(conn, obj, f"/{index}")
            if isinstance(checked, Outcome):
                outcomes[index] = checked
            elif checked.custom_id in seen:  # the first occurrence in the same call wins
                outcomes[index] = Outcome("duplicate", checked.custom_id)
            else:
                seen.add(checked.custom_id)
                to_store.append((index, checked))
        inserted = await requests_store.insert_bulk(conn, [r for _, r in to_store])
        for index, request in to_store:
            status = "accepted" if request.custom_id in inserted else "duplicate"
            outcomes[index] = Outcome(status, request.custom_id)
        return [o for o in outcomes if o is not None]
