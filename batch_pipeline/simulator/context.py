"""What every route needs: the running simulator, the API-key check and JSON body parsing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from .batches import BatchService
from .errors import OpenAIError, bad_request
from .http_faults import FaultDice
from .settings import SimulatorSettings
from .store import Store


@dataclass
class Simulator:
    settings: SimulatorSettings
    store: Store
    batches: BatchService
    dice: FaultDice

    @classmethod
    def build(cls, settings: SimulatorSettings) -> Simulator:
        store = Store(settings)
        return cls(settings, store, BatchService(store), FaultDice(store))

    def reset(self) -> None:
        self.store.reset()
        self.batches.reset()
        self.dice.reset()


def get_simulator(request: Request) -> Simulator:
    return request.app.state.simulator


SimDep = Annotated[Simulator, Depends(get_simulator)]


def require_api_key(request: Request) -> None:
    """Like OpenAI, refuse /v1 calls without ``Authorization: Bearer <key>``; any key is accepted."""
    if not get_simulator(request).settings.require_api_key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise OpenAIError(
            401,
            "You didn't provide an API key. Send 'Authorization: Bearer <key>' (any key works here).",
        )


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_request("We could not parse the JSON body of your request: it is not valid JSON.") from None


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
