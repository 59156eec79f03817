"""The /v1 routes: requests routed by their `model` to an engine started on demand, and the list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request

from vramgate.api.common import any_key, scheduler_of
from vramgate.api.relaying import Endpoint, Routed
from vramgate.auth import Access
from vramgate.engines.base import ALL_ROUTES
from vramgate.errors import BadRequest
from vramgate.scheduling.driver import Scheduler

router = APIRouter()


class RelayEndpoint(Endpoint):
    """POST on one OpenAI route: relayed as it is (mended only for engines that stray)."""

    async def route(
        self, scheduler: Scheduler, name: str, label: str, payload: dict[str, Any], body: bytes
    ) -> Routed:
        model = scheduler.settings.models[name]
        adapter = scheduler.adapters[model.engine]
        if self.path not in adapter.routes(model):
            routes = ", ".join(sorted(adapter.routes(model)))
            raise BadRequest(
                f"model '{name}' (task: {model.task}) does not serve {self.path}; "
                f"it serves {routes}"
            )
        fix = adapter.answer_fix(label, self.path)
        upstream = adapter.upstream_model(name, model)
        if label != upstream:
            payload["model"] = upstream
            body = orjson.dumps(payload)
        return Routed(name, self.path, body, payload.get("stream") is True, fix)


RELAYS = {path: RelayEndpoint(path) for path in ALL_ROUTES}


@router.get("/v1/models")
async def list_models(request: Request, access: Access = Depends(any_key)) -> dict[str, Any]:
    """The models this key may use (all of them when no key is configured)."""
    scheduler = scheduler_of(request)
    created = int(request.app.state.started_at)
    created_at = datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
    data = []
    for name, inst in scheduler.instances.items():
        if name not in scheduler.settings.models or not access.may_use(name):
            continue
        data.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vramgate",
                # Anthropic's fields too: its SDK's models.list() reads the same route.
                "type": "model",
                "display_name": name,
                "created_at": created_at,
                "vramgate": {
                    "state": inst.state.value,
                    "engine": inst.model.engine,
                    "task": inst.model.task,
                    "aliases": list(inst.model.aliases),
                },
            }
        )
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": last}
