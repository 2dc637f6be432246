"""HTTP pieces every service shares: structured JSON errors and request-latency middleware."""

import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import Histogram, make_asgi_app
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ErrorBody(BaseModel):
    code: str = Field(examples=["payload_too_large"])
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(exc: ApiError) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=exc.code, message=exc.message))
    return JSONResponse(body.model_dump(), status_code=exc.status, headers=exc.headers)


class RequestTimer:
    """Pure ASGI middleware: request latency by method, route template and status into ``histogram``
    (FastAPI's decorator form costs more)."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            self.histogram.labels(scope["method"], path, str(status)).observe(time.perf_counter() - started)


def service_app(title: str, description: str, lifespan, request_seconds: Histogram) -> FastAPI:
    """A service's FastAPI app with what every service has: ``/healthz``, ``/metrics``, request latency into
    ``request_seconds``, and `ApiError` answered as structured JSON. Each service adds its own ``/readyz``."""
    app = FastAPI(title=title, version="1", description=description, lifespan=lifespan)
    app.mount("/metrics", make_asgi_app())

    @app.get("/healthz", summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(RequestTimer, histogram=request_seconds)
    app.add_exception_handler(ApiError, lambda _request, exc: error_response(exc))  # type: ignore[arg-type]
    return app
