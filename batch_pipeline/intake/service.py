"""Intake service: validate and store submitted requests. One code path for HTTP, bulk and RabbitMQ."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
import psycopg

from batch_pipeline.config import Settings
from batch_pipeline.intake.fast_decode import fast_validate
from batch_pipeline.intake.validation import (
    Limits,
    NewRequest,
    RequestTooLarge,
    error,
    validate_request,
)
from batch_pipeline.model_limits import token_limit_for
from batch_pipeline.store import model_limits as limits_store
from batch_pipeline.store import request_inserts as requests_store
from batch_pipeline.url_policy import UrlPolicy, intake_url_policy

# Overrides change rarely; re-reading them on every request would double the intake's queries.
OVERRIDES_TTL_SECONDS = 5.0


class Outcome(msgspec.Struct, gc=False, omit_defaults=True):
    """What happened to one submitted item: accepted, duplicate, invalid or too_large.

    Encodes (msgspec) as the bulk API's per-item result: ``errors`` only when there are some. Untracked
    by the garbage collector for the reason ``NewRequest`` is: a bulk call keeps one per item.
    """

    status: str
    custom_id: str | None
    # An immutable default: one Outcome per bulk item, so no empty list is built for each success.
    errors: Sequence[dict] = ()


@dataclass(frozen=True)
class Undecodable:
    """An item that was not even JSON (e.g. a bad NDJSON line); reported as invalid in its place."""

    detail: str


class TooManyItems(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} requests per bulk call")
        self.limit = limit


async def _chunks(items: Iterable[Any] | AsyncIterable[list[Any]]) -> AsyncIterator[Iterable[Any]]:
    # Streams arrive in chunks of items: one await per chunk, not per item, keeps the loop cheap.
    if isinstance(items, AsyncIterable):
        async for chunk in items:
            yield chunk
    else:
        yield items


# Items at least this large are decoded by msgspec, where they lie: orjson copies a buffer first and
# puts the whole document into the error it raises (each a copy of the item, for a hostile one).
LARGE_ITEM_BYTES = 1024 * 1024
_decode_large = msgspec.json.Decoder().decode


def _decode(raw: bytes | bytearray | memoryview) -> Any:
    """The decoded item, or ``Undecodable`` with the reason."""
    try:
        return orjson.loads(raw) if len(raw) < LARGE_ITEM_BYTES else _decode_large(raw)
    except orjson.JSONDecodeError as exc:
        return Undecodable(f"not valid JSON: {exc}")
    except (msgspec.DecodeError, RecursionError) as exc:
        return Undecodable(f"not valid JSON: {exc}")


class IntakeService:
    def __init__(self, settings: Settings) -> None:
        self.limits = Limits(
            custom_id_max_length=settings.custom_id_max_length,
            batch_max_bytes=settings.batch_max_bytes,
            token_safety_factor=settings.token_estimate_safety_factor,
            queue_prefixes=settings.allowed_queue_prefixes,
        )
        self.url_policy: UrlPolicy | None = intake_url_policy(settings)
        self._token_limits: dict[str, int] = {}  # model -> limit, rebuilt when overrides are re-read
        self._overrides: dict[str, int] = {}
        self._overrides_at = float("-inf")

    async def refresh_limits(self, conn: psycopg.AsyncConnection) -> None:
        """Re-read operator overrides of per-model token limits when the cached copy is stale."""
        if time.monotonic() - self._overrides_at > OVERRIDES_TTL_SECONDS:
            self._overrides = await limits_store.fetch_overrides(conn)
            self._token_limits = {}
            self._overrides_at = time.monotonic()

    def invalidate_limits(self) -> None:
        self._overrides_at = float("-inf")

    def _token_limit(self, model: str) -> int:
        limit = self._token_limits.get(model)
        if limit is None:
            limit = self._token_limits[model] = token_limit_for(model, self._overrides)
        return limit

    def check(self, obj: Any, index: int | None = None) -> NewRequest | Outcome:
        """Validate one item (after ``refresh_limits``): a ``NewRequest``, or the ``Outcome`` to report.

        ``obj`` is raw JSON bytes (fast path first) or an already decoded value; ``index`` is its place
        in a bulk call, which error pointers start with.
        """
        if isinstance(obj, bytes | bytearray | memoryview):
            # A buffer (a long NDJSON line) is decoded where it lies, not copied for the fast path.
            fast = fast_validate(obj, self.limits, self.url_policy) if isinstance(obj, bytes) else None
            if fast is not None and fast.estimated_tokens <= self._token_limit(fast.model):
                return fast
            obj = _decode(obj)
        pointer = "" if index is None else f"/{index}"  # built off the fast path only
        if isinstance(obj, Undecodable):
            return Outcome(
                "invalid", None, [error(obj.detail, pointer or "/", "invalid_json", "Invalid JSON")]
            )
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
        limit = self._token_limit(checked.model)
        if checked.estimated_tokens > limit:
            detail = (
                f"request is estimated at {checked.estimated_tokens} input tokens, over the "
                f"{limit}-token batch queue limit for {checked.model}"
            )
            return Outcome("invalid", custom_id, [error(detail, f"{pointer}/body", code="token_limit")])
        return checked

    async def submit(self, conn: psycopg.AsyncConnection, obj: Any) -> Outcome:
        await self.refresh_limits(conn)
        checked = self.check(obj)
        if isinstance(checked, Outcome):
            return checked
        inserted = await requests_store.insert_request(conn, checked)
        return Outcome("accepted" if inserted else "duplicate", checked.custom_id)

    async def submit_bulk(
        self,
        conn: psycopg.AsyncConnection,
        objs: Iterable[Any] | AsyncIterable[Any],
        max_items: int | None = None,
    ) -> list[Outcome]:
        """Validate every item and store the valid ones in one transaction; one outcome per item, in order.

        ``objs`` may be an async iterable of item lists (NDJSON as it arrives). More than ``max_items`` raises
        ``TooManyItems`` and stores nothing.

        Validation and COPY are interleaved: rows stream to Postgres while later items are still being
        checked, so the database's work overlaps ours (it runs in another process, on another core).
        The COPY is optimistic: if any custom_id already exists it fails as a whole, and the batch is
        re-inserted through a staging table with ON CONFLICT DO NOTHING (slower, but only then).
        """
        await self.refresh_limits(conn)
        seen: set[str] = set()
        outcomes: list[Outcome] = []
        fresh: list[NewRequest] = []
        async with requests_store.BulkWriter(conn) as writer:
            index = -1
            async for chunk in _chunks(objs):
                for obj in chunk:
                    index += 1
                    if max_items is not None and index >= max_items:
                        raise TooManyItems(max_items)
                    checked = self.check(obj, index)
                    if isinstance(checked, Outcome):
                        outcomes.append(checked)
                    elif checked.custom_id in seen:  # the first occurrence in one call wins
                        outcomes.append(Outcome("duplicate", checked.custom_id))
                    else:
                        seen.add(checked.custom_id)
                        fresh.append(checked)
                        if writer.add(checked):
                            await writer.flush()
                        outcomes.append(Outcome("accepted", checked.custom_id))
        if writer.raced:
            # Some custom_id existed already (or a concurrent writer got there first).
            inserted = await requests_store.insert_bulk_conflict_safe(conn, fresh)
            for outcome in outcomes:
                if outcome.status == "accepted" and outcome.custom_id not in inserted:
                    outcome.status = "duplicate"
        return outcomes
