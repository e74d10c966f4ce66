"""The HTTP service of a packaged model: predict, feedback, model card, health, metrics, a web page.

`create_app(settings)` builds the FastAPI app; `foundry serve` runs it with uvicorn. This file only
wires the parts together: the Service with the model and its state (service.py), the endpoints
(routes.py), input checks and encoding (inputs.py), error answers (errors.py), micro-batching
(batching.py) and metrics (metrics.py). Requests are checked and encoded before they are queued for
the micro-batcher, which runs the model in one thread of its own. Errors are JSON
`{"error": {"field", "message"}}` with a 4xx status, and inputs are never logged.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from modelfoundry.serve.errors import body_too_large, install_error_handlers
from modelfoundry.serve.metrics import ServeMetrics
from modelfoundry.serve.routes import STATIC, router
from modelfoundry.serve.service import Served, Service, Settings, load_served


def create_app(settings: Settings, served: Served | None = None) -> FastAPI:
    service = Service(settings, served or load_served(settings.model, settings.backend))
    app = FastAPI(
        title="modelfoundry model service",
        version="1",
        lifespan=lifespan,
        # The router's routes themselves, not app.include_router(router): FastAPI 0.165 keeps an included
        # router as one route that dispatches again, about 10 us more per request.
        routes=list(router.routes),
        description="Predictions, feedback and the model card of a packaged modelfoundry model.",
    )
    app.state.service = service
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )
    app.add_middleware(LimitsAndMetrics, metrics=service.metrics, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The batcher runs while the app does; so does the alias watch, when asked for."""
    service: Service = app.state.service
    service.batcher.start()
    # Only an alias can move; a run or version stays what it is.
    watch = service.settings.watch_seconds > 0 and service.served.alias
    watcher = asyncio.create_task(service.watch()) if watch else None
    yield
    if watcher:
        watcher.cancel()
    await service.batcher.stop()


class LimitsAndMetrics:
    """ASGI middleware: refuses bodies over the size limit (by header, and by counting when streamed),
    and counts requests and latency by route and status for /metrics."""

    def __init__(self, app, metrics: ServeMetrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), {"code": 500}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            self.metrics.observe("oversized", 413, time.perf_counter() - start)
            return
        received = {"bytes": 0}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def recording_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, counted_receive, recording_send)
        except _BodyTooLarge:
            await self._too_large(send)
            status["code"] = 413
        route = scope.get("route")
        self.metrics.observe(getattr(route, "path", "unmatched"), status["code"], time.perf_counter() - start)

    async def _too_large(self, send) -> None:
        body = body_too_large(self.max_body_bytes)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
