"""HTTP pieces every service shares: structured JSON errors, API-key checks and request-latency middleware."""

import hmac
import time
from collections.abc import Callable, Iterable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import Histogram, make_asgi_app
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shelfcast.errors import ShelfcastError
from shelfcast.settings import Settings


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


HTTP_ERROR_CODES = {400: "malformed_request", 404: "not_found", 405: "method_not_allowed"}


def http_error_response(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own errors (a body it cannot parse, an unknown path) in the same structured form as ours."""
    assert isinstance(exc, HTTPException)
    code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    return error_response(ApiError(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None))


UNAUTHORIZED = {"model": ErrorResponse, "description": "missing or invalid API key (Authorization: Bearer <key>)"}


def bearer_key_check(keys: Iterable[str], realm: str) -> Callable[[Request], None]:
    """A check (`KeyGuard`'s, or a FastAPI dependency) that accepts only `Authorization: Bearer <one of keys>`, else
    answers 401 with `WWW-Authenticate`. An empty `keys` accepts nothing. The 401 is the same whatever was presented."""
    accepted = [k.encode() for k in keys]
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}"'}

    def require_key(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        presented = token.strip().encode()
        # Compare against every key, without stopping early, so timing says nothing about which matched.
        matched = False
        for key in accepted:
            matched |= hmac.compare_digest(presented, key)
        if scheme.lower() != "bearer" or not presented or not matched:
            raise ApiError(401, "unauthorized", "missing or invalid API key (Authorization: Bearer <key>)", challenge)

    return require_key


def read_key_check(settings: Settings, realm: str) -> Callable[[Request], None]:
    """The dependency of the read APIs (forecaster, agent). Fails closed at start-up: no read key configured, or a
    key that is also an ingest write key, is an error, never an open or a shared-secret API."""
    read_keys = settings.load_read_api_keys()
    if not read_keys:
        raise ShelfcastError(
            f"{realm}: no read API key configured: set SHELFCAST_READ_API_KEYS or SHELFCAST_READ_API_KEYS_FILE"
        )
    if read_keys & settings.load_api_keys():
        raise ShelfcastError(
            f"{realm}: a read API key is also an ingest write key (SHELFCAST_API_KEYS): use separate keys"
        )
    return bearer_key_check(read_keys, realm)


class KeyGuard:
    """Pure ASGI middleware: a request under `prefix` needs a key that `check` accepts, checked before routing and
    body parsing, so a caller without one learns nothing, not even whether its body or SKU would parse."""

    def __init__(self, app: ASGIApp, check: Callable[[Request], None], prefix: str = "/v1/") -> None:
        self.app, self.check, self.prefix = app, check, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            try:
                self.check(Request(scope))
            except ApiError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


def service_app(
    title: str,
    description: str,
    lifespan,
    request_seconds: Histogram,
    dead: Callable[[Request], str | None] | None = None,
    key_check: Callable[[Request], None] | None = None,
) -> FastAPI:
    """A service's FastAPI app with what every service has: ``/healthz``, ``/metrics``, request latency into
    ``request_seconds``, and `ApiError` answered as structured JSON. Each service adds its own ``/readyz``.
    ``dead``: why the process must be restarted (a loop it depends on has died), or None; ``/healthz`` answers 503
    with that reason, so that the orchestrator restarts it. ``key_check``: every ``/v1/`` request needs a key it
    accepts (`KeyGuard`); health, readiness and metrics stay open."""
    app = FastAPI(title=title, version="1", description=description, lifespan=lifespan)
    app.mount("/metrics", make_asgi_app())

    @app.get("/healthz", summary="The process is up", responses={503: {"description": "restart me: the reason"}})
    def healthz(request: Request) -> JSONResponse:
        reason = dead(request) if dead is not None else None
        if reason is not None:
            return JSONResponse({"status": "dead", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    if key_check is not None:
        app.add_middleware(KeyGuard, check=key_check)  # inside the timer: refused requests are timed too
    app.add_middleware(RequestTimer, histogram=request_seconds)
    app.add_exception_handler(ApiError, lambda _request, exc: error_response(exc))  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error_response)
    return app
