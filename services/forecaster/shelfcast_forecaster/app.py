"""The forecaster HTTP API, with the Kafka scoring loop and the model hot-reload running beside it.

- ``GET /v1/forecast/{sku}``: the cached forecast (``sc:fcst:{sku}`` in Redis) or, on a miss, one scored now
  from the feature store; 404 when the feature store has no history for the SKU.
- ``POST /v1/forecast`` ``{"skus": [...]}``: the same for up to ``max_request_skus`` SKUs; unknown ones are
  listed, not an error.
- ``/healthz`` (503 once the scoring loop's thread has died: restart the process), ``/readyz`` (the scoring loop's
  thread is alive when streaming, a model is loaded and Redis answers), ``/metrics``.
A forecast from too little history comes from the Poisson fallback and says so: ``fallback: true``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import redis
from fastapi import FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from shelfcast.contracts import SKU_PATTERN, Forecast
from shelfcast.http import UNAUTHORIZED, ApiError, ErrorResponse, read_key_check, service_app
from shelfcast.settings import Settings, get_settings
from shelfcast.store import connect_redis
from shelfcast_forecaster.monitoring import REQUEST_SECONDS
from shelfcast_forecaster.service import ForecastService, NoModel, ScoringLoop
from shelfcast_forecaster.settings import ForecasterSettings

log = logging.getLogger(__name__)
JSON = "application/json"


class BatchRequest(BaseModel):
    skus: list[Annotated[str, Field(pattern=SKU_PATTERN)]] = Field(min_length=1, examples=[["SKU-00001"]])


class BatchResponse(BaseModel):
    forecasts: list[Forecast]
    unknown: list[str] = Field(description="SKUs without history in the feature store")


def create_app(
    settings: Settings | None = None, config: ForecasterSettings | None = None, stream: bool = True
) -> FastAPI:
    settings = settings or get_settings()
    config = config or ForecasterSettings()
    require_read_key = read_key_check(settings, "shelfcast-forecaster")  # no read key configured: no start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = ForecastService(connect_redis(settings.redis_url), config)
        service.reload_if_changed()
        stop = threading.Event()
        threads = [threading.Thread(target=_reload_forever, args=(service, stop), name="reload", daemon=True)]
        app.state.loop = app.state.loop_thread = None
        if stream:
            loop = ScoringLoop(service, settings)
            app.state.loop = loop
            app.state.loop_thread = threading.Thread(target=loop.run, args=(stop,), name="scoring", daemon=True)
            threads.append(app.state.loop_thread)
        for thread in threads:
            thread.start()
        app.state.service = service
        yield
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    app = service_app(
        "Shelfcast forecaster",
        "Demand quantiles per SKU from the current model, cached in Redis and refreshed by the stream.",
        lifespan,
        REQUEST_SECONDS,
        dead=_scoring_loop_stopped,
        key_check=require_read_key,
    )
    errors = {
        401: UNAUTHORIZED,
        404: {"model": ErrorResponse, "description": "no history for this SKU in the feature store"},
        503: {"model": ErrorResponse, "description": "no model trained yet, or Redis unavailable"},
    }

    @app.get(
        "/v1/forecast/{sku}",
        response_model=Forecast,
        responses={**errors, 422: {"description": "not a valid SKU"}},  # type: ignore[dict-item]
        summary="The latest forecast of one SKU",
    )
    async def get_forecast(request: Request, sku: Annotated[str, Path(pattern=SKU_PATTERN)]) -> Response:
        service: ForecastService = request.app.state.service
        try:
            cached = service.cached([sku])[0]  # one sub-millisecond GET: cheaper inline than via a thread
        except redis.RedisError as exc:
            raise ApiError(503, "redis_unavailable", str(exc), headers={"Retry-After": "1"}) from None
        if cached is not None:
            return Response(cached, media_type=JSON)
        scored = await run_in_threadpool(_score, service, [sku])
        if sku not in scored:
            raise ApiError(404, "unknown_sku", f"SKU {sku!r} has no {config.granularity} demand history")
        return Response(scored[sku].to_bytes(), media_type=JSON)

    @app.post(
        "/v1/forecast",
        response_model=BatchResponse,
        responses={
            **errors,  # type: ignore[dict-item]
            400: {"model": ErrorResponse, "description": "the body is not JSON"},
            413: {"model": ErrorResponse, "description": "too many SKUs"},
        },
        summary="Forecasts of many SKUs",
    )
    def post_forecasts(request: Request, body: BatchRequest) -> JSONResponse:
        if len(body.skus) > config.max_request_skus:
            raise ApiError(
                413, "too_many_skus", f"{len(body.skus)} SKUs is over the limit of {config.max_request_skus}"
            )
        service: ForecastService = request.app.state.service
        skus = list(dict.fromkeys(body.skus))
        try:
            cached = dict(zip(skus, service.cached(skus), strict=True))
        except redis.RedisError as exc:
            raise ApiError(503, "redis_unavailable", str(exc), headers={"Retry-After": "1"}) from None
        found = {sku: Forecast.from_bytes(raw) for sku, raw in cached.items() if raw is not None}
        found |= _score(service, [sku for sku, raw in cached.items() if raw is None])
        response = BatchResponse(
            forecasts=[found[s] for s in skus if s in found], unknown=[s for s in skus if s not in found]
        )
        return JSONResponse(response.model_dump(mode="json"))

    @app.get("/readyz", summary="The scoring loop runs, a model is loaded and Redis answers", responses={503: {}})
    def readyz(request: Request) -> JSONResponse:
        service: ForecastService = request.app.state.service
        if (stopped := _scoring_loop_stopped(request)) is not None:
            return JSONResponse({"status": "unavailable", "reason": stopped}, status_code=503)
        if service.version is None:
            return JSONResponse({"status": "unavailable", "reason": "no model loaded"}, status_code=503)
        try:
            service.redis.ping()
        except redis.RedisError as exc:
            return JSONResponse({"status": "unavailable", "reason": f"Redis: {exc}"}, status_code=503)
        return JSONResponse({"status": "ready", "model_version": service.version})

    return app


def _scoring_loop_stopped(request: Request) -> str | None:
    """Why the scoring loop's thread is no longer running (None while it runs, or when not streaming): /healthz
    answers 503 with it, so the orchestrator restarts the process, and /readyz too."""
    loop: ScoringLoop | None = getattr(request.app.state, "loop", None)
    if loop is None or request.app.state.loop_thread.is_alive():
        return None
    why = f": {type(loop.error).__name__}: {loop.error}" if loop.error is not None else ""
    return f"scoring loop stopped{why}"


def _score(service: ForecastService, skus: list[str]) -> dict[str, Forecast]:
    if not skus:
        return {}
    try:
        return service.score(skus, source="request")
    except NoModel as exc:
        raise ApiError(503, "no_model", str(exc)) from None
    except redis.RedisError as exc:
        raise ApiError(503, "redis_unavailable", str(exc), headers={"Retry-After": "1"}) from None


def _reload_forever(service: ForecastService, stop: threading.Event) -> None:
    while not stop.wait(service.config.reload_seconds):
        service.reload_if_changed()


def app_from_env() -> FastAPI:
    """The uvicorn factory: `uvicorn --factory shelfcast_forecaster.app:app_from_env`."""
    return create_app()
