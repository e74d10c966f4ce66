"""The HTTP service of a packaged model: predict, feedback, model card, health, metrics, a web page.

`create_app(settings)` builds the FastAPI app; `foundry serve` runs it with uvicorn. This file only
wires the parts together: the Service with the model and its state (service.py), the endpoints
(routes.py), input checks and encoding (each task's `encode_request`), error answers (errors.py),
micro-batching (batching.py) and metrics (metrics.py). Requests are checked and encoded before they
are queued for the micro-batcher, which runs the model in one thread of its own. Errors are JSON
`{"error": {"field", "message"}}` with a 4xx status (500 for a bug), and inputs are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import traceback
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from modelfoundry.serve import openai
from modelfoundry.serve.errors import BodyTooLarge, error_body, http_answer, install_error_handlers
from modelfoundry.serve.metrics import ServeMetrics
from modelfoundry.serve.routes import BATCH_PATH, STATIC, router
from modelfoundry.serve.service import Served, Service, Settings, load_served

log = logging.getLogger("modelfoundry.serve")


def create_app(settings: Settings, served: Served | None = None) -> FastAPI:
    service = Service(settings, served or load_served(settings.model, settings.backend, settings.precision))
    app = FastAPI(
        title="modelfoundry model service",
        version="1",
        lifespan=lifespan,
        # The router's routes themselves, not app.include_router(router): FastAPI 0.165 keeps an included
        # router as one route that dispatches again, about 10 us more per request.
        routes=list(router.routes) + list(openai.router.routes),
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
    app.add_middleware(
        LimitsAndMetrics,
        metrics=service.metrics,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        allowed_hosts=host_names(settings),
    )
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The batcher runs while the app does; so does the alias watch, when asked for."""
    service: Service = app.state.service
    for line in access_notes(service.settings):
        log.info(line)
    service.batcher.start()
    if service.engine is not None:
        service.engine.start()
    # Only an alias can move; a run or version stays what it is.
    watch = service.settings.watch_seconds > 0 and service.served.alias
    watcher = asyncio.create_task(service.watch()) if watch else None
    yield
    if watcher:
        watcher.cancel()
    await service.batcher.stop()
    if service.engine is not None:
        service.engine.close()


def host_names(settings: Settings) -> frozenset[str]:
    """The Host header values the server answers (port aside): its own names, so a web page that
    re-points its domain at this machine (DNS rebinding) gets no answer from the browser's requests."""
    names = {"127.0.0.1", "localhost", "::1", settings.host, *settings.allowed_hosts}
    if settings.host in ("0.0.0.0", "::", ""):  # every interface: the names and addresses of this machine
        names |= {socket.gethostname(), socket.getfqdn()}
        with contextlib.suppress(OSError):
            names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    return frozenset(name.lower().rstrip(".") for name in names)


def access_notes(settings: Settings) -> list[str]:
    """What `foundry serve` says at start about who may call what."""
    names = sorted(host_names(settings))
    notes = [f"accepting the Host names {', '.join(names)}; add others with --allowed-host NAME (repeatable)"]
    if settings.api_key is None:
        notes.append(
            "no --api-key: anyone who can reach this server may send feedback; stored feedback "
            "(GET /v1/feedback) and admin routes answer only this machine"
        )
    return notes


class LimitsAndMetrics:
    """ASGI middleware around everything else: refuses a Host header that names another server (DNS
    rebinding) and bodies over the size limit (by header, and by counting while they stream in),
    answers an unhandled exception with a JSON 500 instead of a bare traceback, and counts every answer
    by route and status, with its latency, for /metrics.

    The Host check is ours rather than Starlette's TrustedHostMiddleware: the same rule (port ignored,
    `*.example.com` wildcards), but answered in our JSON shape, counted here, with `::1` matching an
    IPv6 Host `[::1]:8000`, and without a second pass over the headers."""

    def __init__(
        self,
        app,
        metrics: ServeMetrics,
        max_body_bytes: int,
        max_upload_bytes: int,
        allowed_hosts: frozenset[str],
    ):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self.max_upload_bytes = max_upload_bytes  # the file upload of POST /v1/predict/batch
        self.allowed_hosts = allowed_hosts
        self.any_host = "*" in allowed_hosts
        self.host_suffixes = tuple(name[1:] for name in allowed_hosts if name.startswith("*."))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, answer = time.perf_counter(), {"status": 500, "started": False}
        headers = dict(scope["headers"])
        host = host_of(headers.get(b"host"))
        if not (self.any_host or host in self.allowed_hosts or (host and host.endswith(self.host_suffixes))):
            await send_error(send, 400, "Host", foreign_host(host))
            self.metrics.observe("bad_host", 400, time.perf_counter() - start)
            return
        limit = self.max_upload_bytes if scope["path"] == BATCH_PATH else self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, 413, "body", BodyTooLarge(limit).detail)
            self.metrics.observe("oversized", 413, time.perf_counter() - start)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def recording_send(message):
            if message["type"] == "http.response.start":
                answer["status"], answer["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, counted_receive, recording_send)
        except Exception as exc:  # noqa: BLE001  a bug must still get an answer, and be counted
            status, field, message = (
                http_answer(exc) if isinstance(exc, BodyTooLarge) else internal_error(scope, exc)
            )
            if not answer["started"]:
                await send_error(send, status, field, message)
            answer["status"] = status
        route = scope.get("route")
        self.metrics.observe(
            getattr(route, "path", "unmatched"), answer["status"], time.perf_counter() - start
        )


def host_of(header: bytes | None) -> str | None:
    """The host of a Host header, lowercase, without its port or the brackets of an IPv6 address."""
    if header is None:
        return None
    host = header.decode("latin-1").lower()
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.partition(":")[0].rstrip(".")


def foreign_host(host: str | None) -> str:
    if host is None:
        return "the request has no Host header; send the name of this server in it."
    return (
        f"the Host header names {host!r}, which is not a name of this server; if it is one, start the "
        f"server with --allowed-host {host}."
    )


def internal_error(scope, exc: Exception) -> tuple[int, str, str]:
    """Log an unhandled exception (its traceback, not its message: that may quote the input, and inputs
    are never logged) and say what the client gets."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s %s failed: %s\n%s", scope["method"], scope["path"], type(exc).__name__, frames)
    message = (
        f"the server failed on this request ({type(exc).__name__}); this is a bug, not your input's "
        "fault. It is logged on the server; retry, or report it if it persists."
    )
    return 500, "server", message


async def send_error(send, status: int, field: str, message: str) -> None:
    body = error_body(field, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
