"""The HTTP service of a packaged model: predict, feedback, model card, health, metrics, a web page.

`create_app(settings)` builds the FastAPI app; `foundry serve` runs it with uvicorn. Requests
are checked and encoded in the thread pool, then queued for the micro-batcher (batching.py),
which runs the model in one thread of its own. Errors are JSON `{"error": {"field", "message"}}`
with a 4xx status, and inputs are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import secrets
import time
import warnings
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from modelfoundry.errors import UserError, did_you_mean
from modelfoundry.predictor import Predictor, load
from modelfoundry.runfiles import atomic_write, package_folder
from modelfoundry.serve.batching import MicroBatcher
from modelfoundry.serve.metrics import ServeMetrics

log = logging.getLogger("modelfoundry.serve")
STATIC = Path(__file__).parent / "static"
INLINE_BYTES = 16_384  # requests smaller than this are encoded on the event loop


@dataclass
class Settings:
    model: str  # alias, version (v3), run id or run folder
    backend: str = "auto"  # auto: torch when the package has PyTorch weights, else onnx
    api_key: str | None = None  # required for feedback and admin routes when set
    max_batch_size: int = 64
    max_wait_ms: float = 0.0
    max_inputs: int = 64  # per request
    max_body_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096  # decoded size; larger images are refused before decoding
    cors_origins: list[str] = field(default_factory=list)
    watch_seconds: float = 0.0  # poll the alias and reload on change; 0 = only POST /v1/admin/reload
    remembered_requests: int = 10_000  # recent predictions kept in memory for feedback by request id
    remembered_bytes: int = 256 * 2**20  # ... and at most this many bytes of their images


@dataclass
class Served:
    """The model being served and where it came from."""

    predictor: Predictor
    version: Any  # store.models.ModelVersion, or None for a package outside the registry
    alias: str | None
    loaded_at: float = field(default_factory=time.time)

    @property
    def version_name(self) -> str | None:
        return self.version.name if self.version is not None else None


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str):
        self.status, self.field, self.message = status, field, message


def load_served(ref: str, backend: str = "auto") -> Served:
    """Resolve an alias / version / run to its package and load it. Raises UserError when it can't."""
    from modelfoundry.store.models import ModelStore

    store = ModelStore()
    try:
        version = store.get(ref)
        folder, alias = Path(version.path), ref if ref in store.aliases(version.id) else None
    except UserError:
        if not Path(ref).is_dir():
            raise
        folder, version, alias = package_folder(ref), None, None  # a package outside the registry
    return Served(load(folder, backend=backend), version, alias)


# ---------- request and response bodies (the OpenAPI schema at /docs shows them) ----------


class PredictRequest(BaseModel):
    inputs: list[Any] = Field(
        description="texts; images as base64 or data URLs; table rows as objects column -> value",
        examples=[["a great film"]],
    )
    top_k: int = Field(1, ge=1, le=100, description="how many of the most likely labels to return per input")


class LabelProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    label: str
    probability: float
    top_k: list[LabelProbability]


class PredictResponse(BaseModel):
    request_id: str
    model_version: str | None
    predictions: list[Prediction]


class FeedbackRequest(BaseModel):
    label: str = Field(description="the correct label")
    request_id: str | None = Field(None, description="from a /v1/predict answer")
    index: int = Field(0, ge=0, description="which input of that request")
    input: Any = Field(None, description="the input itself, when there is no request id")
    predicted: str | None = Field(None, description="what the model said, when giving the input itself")


class FeedbackResponse(BaseModel):
    feedback_id: int
    label: str
    predicted: str | None
    model_version: str | None


# ---------- the app ----------


def create_app(settings: Settings, served: Served | None = None) -> FastAPI:
    served = served or load_served(settings.model, settings.backend)
    metrics = ServeMetrics()
    state = {"served": served}
    recent: OrderedDict[str, tuple] = OrderedDict()  # request id -> (stored inputs, predicted labels, Served)
    held = {"bytes": 0}  # image bytes kept in `recent`

    def run_batch(key: Served, payloads: list) -> np.ndarray:
        x = [ids for p in payloads for ids in p] if isinstance(payloads[0], list) else torch.cat(payloads)
        return key.predictor.proba(x)

    batcher = MicroBatcher(
        run_batch, settings.max_batch_size, settings.max_wait_ms, metrics.batch_size.observe
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        # Only an alias can move; a run or version stays what it is.
        watcher = asyncio.create_task(_watch()) if settings.watch_seconds > 0 and served.alias else None
        yield
        if watcher:
            watcher.cancel()
        await batcher.stop()

    app = FastAPI(
        title="modelfoundry model service",
        version="1",
        lifespan=lifespan,
        description="Predictions, feedback and the model card of a packaged modelfoundry model.",
    )
    app.state.settings, app.state.metrics, app.state.batcher = settings, metrics, batcher
    app.state.current = lambda: state["served"]
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )
    app.add_middleware(LimitsAndMetrics, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    _install_error_handlers(app)
    metrics.queue_depth.set_function(lambda: batcher.depth)

    def require_key(request: Request, admin: bool = False) -> None:
        if settings.api_key is None:
            client = request.client.host if request.client else ""
            if admin and client not in ("127.0.0.1", "::1", "localhost"):
                raise ApiError(
                    403,
                    "X-API-Key",
                    "admin routes need the server to be started with --api-key "
                    "when called from another machine.",
                )
            return
        given = request.headers.get("x-api-key")
        if given is None:
            raise ApiError(401, "X-API-Key", "this route needs an API key: send it in the X-API-Key header.")
        if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
            raise ApiError(401, "X-API-Key", "the API key is wrong.")

    async def predict_encoded(current: Served, payload, stored: list, size: int, top_k: int) -> JSONResponse:
        """Queue for the model, then answer. The JSON is built here, not by a response model: with
        a small model, per-request overhead is what limits throughput (bench/serve_load.py)."""
        probabilities = await batcher.submit(current, payload, size)
        labels = current.predictor.labels
        order = np.argsort(-probabilities, axis=1)[:, : min(top_k, len(labels))]
        predictions = [
            {
                "label": labels[top[0]],
                "probability": round(float(p[top[0]]), 6),
                "top_k": [{"label": labels[j], "probability": round(float(p[j]), 6)} for j in top],
            }
            for p, top in zip(probabilities, order)
        ]
        for prediction in predictions:
            metrics.predictions.labels(label=prediction["label"]).inc()
        request_id = secrets.token_hex(8)
        recent[request_id] = (stored, [p["label"] for p in predictions], current)
        held["bytes"] += _size(stored)
        while len(recent) > settings.remembered_requests or held["bytes"] > settings.remembered_bytes:
            held["bytes"] -= _size(recent.popitem(last=False)[1][0])
        return JSONResponse(
            {"request_id": request_id, "model_version": current.version_name, "predictions": predictions}
        )

    async def encode(current: Served, inputs: list, field: str = "inputs"):
        """Small requests are encoded on the event loop (a thread hop costs more than decoding an
        8x8 image or a table row); large ones in the thread pool, so the loop keeps answering."""
        if _approximate_bytes(inputs) <= INLINE_BYTES:
            return encode_inputs(current, inputs, settings, field)
        return await run_in_threadpool(encode_inputs, current, inputs, settings, field)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="A model is loaded and the batcher runs")
    def readyz() -> JSONResponse:
        ready = batcher.running
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "model_version": state["served"].version_name},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/model", tags=["model"], summary="The model card")
    def model_card() -> dict:
        return model_card_of(state["served"], settings)

    @app.post(
        "/v1/predict",
        tags=["predict"],
        response_model=PredictResponse,
        summary="Predict labels for a list of inputs (texts, base64 images or table rows)",
    )
    async def predict(body: PredictRequest) -> JSONResponse:
        current = state["served"]
        _check_count(len(body.inputs), settings.max_inputs)
        payload, stored = await encode(current, body.inputs)
        return await predict_encoded(current, payload, stored, len(body.inputs), body.top_k)

    @app.post(
        "/v1/predict/file",
        tags=["predict"],
        response_model=PredictResponse,
        summary="Predict labels for uploaded image files (multipart field `files`, or `file`)",
    )
    async def predict_file(
        files: Annotated[list[UploadFile] | None, File()] = None,
        file: Annotated[UploadFile | None, File()] = None,
        top_k: Annotated[int, Query(ge=1, le=100)] = 1,
    ) -> JSONResponse:
        current = state["served"]
        uploads = (files or []) + ([file] if file else [])
        if current.predictor.spec["preprocessing"]["kind"] != "image":
            raise ApiError(
                415,
                "files",
                f"this model takes {current.predictor.spec['preprocessing']['kind']} inputs; "
                "upload files to an image model, or POST JSON to /v1/predict.",
            )
        _check_count(len(uploads), settings.max_inputs, field="files")
        contents = [await u.read() for u in uploads]
        payload, stored = await run_in_threadpool(encode_images, current, contents, settings, "files")
        return await predict_encoded(current, payload, stored, len(uploads), top_k)

    @app.post(
        "/v1/feedback",
        tags=["feedback"],
        status_code=201,
        response_model=FeedbackResponse,
        summary="Store the correct label of a prediction (by request id) or of an input",
    )
    async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
        require_key(request)
        current = state["served"]
        if body.request_id is not None:
            if body.request_id not in recent:
                raise ApiError(
                    404,
                    "request_id",
                    f"no recent prediction {body.request_id!r} (this server remembers the "
                    f"last {settings.remembered_requests:,} requests since it started, "
                    "fewer when they carry large images); "
                    "send the input itself in `input` instead.",
                )
            stored, predicted, current = recent[body.request_id]
            if body.index >= len(stored):
                raise ApiError(
                    422,
                    "index",
                    f"request {body.request_id} had {len(stored)} input(s); index must be "
                    f"below {len(stored)}.",
                )
            item, predicted = stored[body.index], predicted[body.index]
        elif body.input is not None:
            _, stored = await encode(current, [body.input], "input")
            item, predicted = stored[0], body.predicted
        else:
            raise ApiError(
                422, "request_id", "give the request_id of a prediction, or the input itself in `input`."
            )
        labels = current.predictor.labels
        if body.label not in labels:
            raise ApiError(
                422,
                "label",
                f"{body.label!r} is not a label of this model.{did_you_mean(body.label, labels)} "
                f"Labels: {', '.join(labels)}.",
            )
        feedback_id = await run_in_threadpool(
            store_feedback, current, item, body.label, predicted, body.request_id
        )
        return FeedbackResponse(
            feedback_id=feedback_id, label=body.label, predicted=predicted, model_version=current.version_name
        )

    @app.get("/v1/feedback", tags=["feedback"], summary="Stored feedback, newest first")
    def feedback_list(request: Request, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict:
        require_key(request)
        from modelfoundry.store.feedback import FeedbackStore, to_json

        return {"feedback": [to_json(r) for r in FeedbackStore().list(limit)]}

    @app.post(
        "/v1/admin/reload", tags=["admin"], summary="Load the model the alias points at now, without downtime"
    )
    async def reload(request: Request) -> dict:
        require_key(request, admin=True)
        return await _reload(force=True)

    async def _reload(force: bool) -> dict:
        previous = state["served"]
        ref = previous.alias or settings.model
        try:
            fresh = await run_in_threadpool(load_served, ref, settings.backend)
        except UserError as exc:
            raise ApiError(409, "model", f"could not load {ref}: {exc}") from None
        changed = fresh.version_name != previous.version_name
        if changed or force:
            state["served"] = fresh  # requests already queued finish on the model that encoded them
            log.info("serving %s (was %s)", fresh.version_name, previous.version_name)
        return {
            "reloaded": changed or force,
            "model_version": fresh.version_name,
            "previous": previous.version_name,
        }

    async def _watch() -> None:
        from modelfoundry.store.models import ModelStore

        while True:
            await asyncio.sleep(settings.watch_seconds)
            try:
                version = await run_in_threadpool(ModelStore().get, state["served"].alias or settings.model)
                if version.name != state["served"].version_name:
                    await _reload(force=False)
            except (UserError, ApiError) as exc:
                log.warning("alias watch: %s", getattr(exc, "message", exc))

    return app


def model_card_of(served: Served, settings: Settings) -> dict:
    spec, pre = served.predictor.spec, served.predictor.spec["preprocessing"]
    card = {
        "version": served.version_name,
        "alias": served.alias,
        "run_id": spec.get("run_id"),
        "task": spec["task"],
        "kind": pre["kind"],
        "model": spec["model"]["name"],
        "backend": served.predictor.backend,
        "variant": spec.get("variant", {}).get("kind", "base"),
        "labels": served.predictor.labels,
        "created": spec.get("created"),
        "metrics": (served.version.metrics if served.version is not None else None)
        or {"test_accuracy": spec.get("test_accuracy")},
        "feedback_requires_key": settings.api_key is not None,
        "max_inputs": settings.max_inputs,
    }
    if pre["kind"] == "table":
        card["columns"] = [
            {"name": c["name"], "kind": c["kind"], "categories": c.get("categories", [])}
            for c in pre["columns"]
        ]
    elif pre["kind"] == "image":
        card["image"] = {"size": pre["size"], "channels": pre["channels"]}
    else:
        card["text"] = {"max_length": pre["max_length"], "pii": pre.get("pii")}
    return card


# ---------- inputs: check, encode, and keep what feedback would store ----------


def _check_count(count: int, limit: int, field: str = "inputs") -> None:
    if count == 0:
        raise ApiError(422, field, "the list is empty; send at least one input.")
    if count > limit:
        raise ApiError(413, field, f"{count} inputs in one request; the limit is {limit}. Split the request.")


def encode_inputs(served: Served, inputs: list, settings: Settings, field: str = "inputs"):
    """Raw JSON inputs -> (model payload, what feedback stores per input). Raises ApiError naming the input."""
    kind = served.predictor.spec["preprocessing"]["kind"]
    if kind == "image":
        contents = []
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                raise ApiError(
                    422,
                    _at(field, i, inputs),
                    f"an image model takes base64 strings (or data URLs); got {_json_type(item)}.",
                )
            contents.append(_base64(item, _at(field, i, inputs)))
        return encode_images(served, contents, settings, field, single=len(inputs) == 1 and field == "input")
    if kind == "text":
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                raise ApiError(
                    422, _at(field, i, inputs), f"a text model takes strings; got {_json_type(item)}."
                )
            if not item.strip():
                raise ApiError(422, _at(field, i, inputs), "the text is empty.")
        texts = list(inputs)
        if served.predictor.spec["preprocessing"].get("pii", "off") != "off":
            from modelfoundry.data.privacy import scrub_texts

            stored, _, _ = scrub_texts(texts, "redact")  # feedback never keeps the personal data it was sent
        else:
            stored = texts
        return served.predictor.encode(texts), [{"text": t} for t in stored]
    return _encode_rows(served, inputs, field)


def _encode_rows(served: Served, rows: list, field: str):
    columns = served.predictor.spec["preprocessing"]["columns"]
    names = [c["name"] for c in columns]
    for i, row in enumerate(rows):
        where = _at(field, i, rows)
        if not isinstance(row, dict):
            raise ApiError(
                422, where, f"a table model takes objects of column -> value; got {_json_type(row)}."
            )
        missing, extra = [n for n in names if n not in row], [k for k in row if k not in names]
        if missing:
            raise ApiError(
                422,
                where,
                f"missing column(s) {', '.join(map(repr, missing))}. The model needs: {', '.join(names)}.",
            )
        if extra:
            raise ApiError(
                422,
                where,
                f"unknown column(s) {', '.join(map(repr, extra))}.{did_you_mean(extra[0], missing or names)}"
                f" The model takes: {', '.join(names)}.",
            )
        for column in columns:
            value = row[column["name"]]
            if (
                column["kind"] == "number"
                and value is not None
                and (isinstance(value, bool) or not isinstance(value, (int, float)))
            ):
                raise ApiError(
                    422,
                    f"{where}.{column['name']}",
                    f"{value!r} is not a number; this column takes numbers (or null for a missing value).",
                )
            if isinstance(value, (dict, list)):
                raise ApiError(
                    422, f"{where}.{column['name']}", f"got {_json_type(value)}; give a string or number."
                )
    from modelfoundry.data.tabular import TableEncoder

    frame = pd.DataFrame([{n: row[n] for n in names} for row in rows], columns=names)
    features = TableEncoder(served.predictor.spec["preprocessing"]).transform(frame, field)
    return torch.from_numpy(features), [{"row": {n: row[n] for n in names}} for row in rows]


def encode_images(
    served: Served, contents: list[bytes], settings: Settings, field: str, single: bool = False
):
    arrays, stored = [], []
    for i, data in enumerate(contents):
        where = field if single else f"{field}.{i}"
        image = decode_image(data, where, settings.max_image_pixels)
        try:
            arrays.append(served.predictor._image(image))
        except UserError as exc:
            raise ApiError(422, where, str(exc)) from None
        stored.append({"image_bytes": data})
    return torch.from_numpy(np.stack(arrays)), stored


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode an image; its declared size is checked before any pixel is decoded (decompression bombs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ApiError(
                    413,
                    field,
                    f"the image is {width}x{height} pixels; the limit is {max_pixels:,} pixels. "
                    "Send a smaller image.",
                )
            image.load()
            return image
    except ApiError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        reason = (
            "not an image Pillow can read (PNG, JPEG, GIF, BMP, WebP, TIFF)"
            if isinstance(exc, UnidentifiedImageError)
            else f"a damaged or unreadable image ({type(exc).__name__})"
        )
        raise ApiError(422, field, f"{reason}.") from None


def _base64(item: str, field: str) -> bytes:
    if item.startswith("data:"):
        item = item.partition(",")[2]
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            422, field, "not valid base64; send the image file's bytes base64-encoded (or a data URL)."
        ) from None


def store_feedback(
    served: Served, item: dict, label: str, predicted: str | None, request_id: str | None
) -> int:
    from modelfoundry.store.feedback import FeedbackStore, media_dir

    if "image_bytes" in item:  # the original file, beside the database: retraining reads it like any image
        data = item["image_bytes"]
        kind = (Image.open(io.BytesIO(data)).format or "png").lower()
        path = media_dir() / "images" / f"{secrets.token_hex(8)}.{kind}"
        atomic_write(path, data)  # on disk before the row that names it is committed
        item = {"image": str(path.resolve())}
    spec = served.predictor.spec
    return FeedbackStore().add(
        run_id=spec.get("run_id", ""),
        kind=spec["preprocessing"]["kind"],
        input=item,
        label=label,
        predicted=predicted,
        request_id=request_id,
        model_version=served.version.id if served.version is not None else None,
    )


def _approximate_bytes(inputs: list) -> int:
    return sum(
        len(item) if isinstance(item, str) else 64 * len(item) if isinstance(item, dict) else 16
        for item in inputs
    )


def _size(stored: list[dict]) -> int:
    return sum(len(item.get("image_bytes", b"")) for item in stored)


def _at(field: str, i: int, inputs: list) -> str:
    return field if field == "input" else f"{field}.{i}"


def _json_type(value) -> str:
    return {
        str: "a string",
        dict: "an object",
        list: "a list",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


# ---------- errors and limits ----------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"field": exc.field, "message": exc.message}}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            position = (first.get("ctx") or {}).get("error", "")
            return JSONResponse(
                {"error": {"field": "body", "message": f"the body is not valid JSON ({position})."}},
                status_code=400,
            )
        fields = [".".join(str(p) for p in e["loc"] if p != "body") or "body" for e in errors]
        message = "; ".join(f"{f}: {e['msg']}" for f, e in zip(fields, errors))
        return JSONResponse({"error": {"field": fields[0], "message": message}}, status_code=422)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"error": {"field": "inputs", "message": str(exc)}}, status_code=422)


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
        body = (
            b'{"error": {"field": "body", "message": "the request body is larger than the limit of '
            + f"{self.max_body_bytes:,}".encode()
            + b' bytes."}}'
        )
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
