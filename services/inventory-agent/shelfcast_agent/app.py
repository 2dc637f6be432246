"""The inventory agent's HTTP API, with the Kafka decision loop running beside it.

- ``GET /v1/inventory/{sku}``: the SKU's inventory state (`sc:inv:{sku}`): on hand, pipeline, inventory position,
  price, the last decision and its reason, the parameters it is decided with; 404 when the agent has no state.
- ``/healthz``: 503 once the decision loop's thread died without being asked to stop (the orchestrator restarts
  the process; the crash ledger then skips a record that killed the loop twice); ``/readyz``: 503 with the reason
  unless Redis answers, the loop's thread runs and its consumer holds partitions; 200 says whether the newest
  decision fell back for want of a fresh forecast (`deciding_on_fallbacks`) and the newest forecast's age;
  ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis
from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, create_model

from shelfcast.contracts import SKU_PATTERN
from shelfcast.http import UNAUTHORIZED, ApiError, ErrorResponse, read_key_check, service_app
from shelfcast.settings import Settings, get_settings
from shelfcast.store import connect_redis
from shelfcast_agent.monitoring import REQUEST_SECONDS
from shelfcast_agent.online import AgentLoop, load_policy
from shelfcast_agent.settings import AgentSettings, SkuCatalog, SkuParams
from shelfcast_agent.state import CorruptState, InventoryState, inventory_key, parse_state

log = logging.getLogger(__name__)


class ForecastSummary(BaseModel):
    start: int
    freq: str
    issued_at: int
    model: str
    model_version: str


# What GET /v1/inventory/{sku} answers: the stored state, the forecast in brief, and the derived figures.
_STORED: dict[str, Any] = {n: (f.annotation, f) for n, f in InventoryState.model_fields.items() if n != "forecast"}
InventoryView = create_model(
    "InventoryView",
    **_STORED,
    forecast=(ForecastSummary | None, None),
    on_order=(float, ...),
    inventory_position=(float, ...),
    params=(SkuParams, ...),
)


def create_app(settings: Settings | None = None, config: AgentSettings | None = None, stream: bool = True) -> FastAPI:
    settings = settings or get_settings()
    config = config or AgentSettings()
    catalog = SkuCatalog.from_file(config.sku_params)  # a bad file fails here, before serving
    require_read_key = read_key_check(settings, "shelfcast-agent")  # no read key configured: no start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect_redis(settings.redis_url)
        app.state.redis = client
        app.state.loop = None
        stop = threading.Event()
        thread = None
        app.state.stop = stop
        if stream:
            loop = AgentLoop(client, settings, config, catalog, load_policy(config))
            thread = threading.Thread(target=loop.run, args=(stop,), name="decisions", daemon=True)
            thread.start()
            app.state.loop, app.state.thread = loop, thread
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=30)

    app = service_app(
        "Shelfcast inventory agent",
        "Inventory state per SKU, kept from purchases, receipts and forecasts; reorders and price changes out.",
        lifespan,
        REQUEST_SECONDS,
        dead=_dead_loop,
        key_check=require_read_key,
    )

    @app.get(
        "/v1/inventory/{sku}",
        response_model=InventoryView,
        responses={
            401: UNAUTHORIZED,
            404: {"model": ErrorResponse, "description": "the agent has no state for this SKU"},
            422: {"description": "not a valid SKU"},
            503: {
                "model": ErrorResponse,
                "description": "Redis unavailable, or the SKU's stored state is corrupt (the loop resets it)",
            },
        },
        summary="The inventory state of one SKU",
    )
    def get_inventory(request: Request, sku: Annotated[str, Path(pattern=SKU_PATTERN)]) -> JSONResponse:
        try:
            raw = request.app.state.redis.get(inventory_key(sku))
        except redis.RedisError as exc:
            raise ApiError(503, "redis_unavailable", str(exc), headers={"Retry-After": "1"}) from None
        if raw is None:
            raise ApiError(404, "unknown_sku", f"the agent has no inventory state for SKU {sku!r}")
        try:
            state = parse_state(sku, raw)
        except CorruptState:
            raise ApiError(
                503, "corrupt_state", f"the stored state of SKU {sku!r} is corrupt; its next record resets it"
            ) from None
        body = state.model_dump(mode="json", exclude={"forecast"})
        body["on_order"] = state.on_order
        body["inventory_position"] = state.inventory_position
        body["forecast"] = (
            None
            if state.forecast is None
            else state.forecast.model_dump(
                mode="json", include={"start", "freq", "issued_at", "model", "model_version"}
            )
        )
        body["params"] = catalog(sku).model_dump(mode="json")
        return JSONResponse(body)

    @app.get("/readyz", summary="Redis answers and the decision loop has its partitions", responses={503: {}})
    def readyz(request: Request) -> JSONResponse:
        try:
            request.app.state.redis.ping()
        except redis.RedisError as exc:
            return JSONResponse({"status": "unavailable", "reason": f"Redis: {exc}"}, status_code=503)
        loop: AgentLoop | None = request.app.state.loop
        if loop is not None:
            if not request.app.state.thread.is_alive():
                return JSONResponse({"status": "unavailable", "reason": "decision loop stopped"}, status_code=503)
            if not loop.ready.is_set():
                return JSONResponse({"status": "unavailable", "reason": "no partitions assigned yet"}, status_code=503)
            if not loop.assigned():
                reason = "the consumer holds no partition now (rebalancing, or it lost its group)"
                return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
            return JSONResponse({"status": "ready", "policy": loop.policy_name, **loop.fallback_status()})
        return JSONResponse({"status": "ready", "policy": None})

    return app


def _dead_loop(request: Request) -> str | None:
    """Why /healthz answers 503: the decision loop's thread ended while nobody asked it to stop."""
    thread: threading.Thread | None = getattr(request.app.state, "thread", None)
    if thread is None or thread.is_alive() or request.app.state.stop.is_set():
        return None
    return "the decision loop died (see the log); restart the process"


def app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn --factory shelfcast_agent.app:app_from_env`."""
    return create_app()
