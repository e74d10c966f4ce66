"""Every endpoint of the service, on one APIRouter: the web page, health, metrics, the model card,
predict (JSON and file upload), feedback and reload.

A route checks the request, encodes its inputs (inputs.py) and hands them to the Service
(service.py), which it takes from `request.app.state.service`; the routes hold no state of their own.
The request and response bodies below are what the OpenAPI schema at /docs shows.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException

from modelfoundry.serve.errors import ApiError, check_count
from modelfoundry.serve.service import Served, Service, store_feedback

STATIC = Path(__file__).parent / "static"
INLINE_BYTES = 16_384  # requests smaller than this are encoded on the event loop
LOOPBACK = ("127.0.0.1", "::1", "localhost")

router = APIRouter()


def service_of(request: Request) -> Service:
    """The Service create_app put on the app. Routes call this rather than declare it with Depends:
    resolving a dependency costs about 10 us a request, some 6% of a small prediction's server time."""
    return request.app.state.service


async def read_body(request: Request, model: type[BaseModel]) -> BaseModel:
    """The JSON body as `model`, read in one pass (pydantic parses and checks it in Rust; FastAPI's
    own body parameter costs a json.loads, a validation and its dependency machinery, some 8 us of a
    small request). A body that fails takes FastAPI's way, json.loads then validation: the same error
    messages as before, and JSON that pydantic's parser refuses but Python's reads (a lone surrogate)
    is read."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        pass
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    except (RecursionError, ValueError) as exc:  # errors.http_answer says which
        raise HTTPException(400, "There was an error parsing the body") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


class FastJSONResponse(JSONResponse):
    """JSON written by pydantic-core's serializer (Rust, like orjson, and already installed): a few us
    less per answer than json.dumps. The answers it writes hold no NaN (service.check_finite)."""

    def render(self, content) -> bytes:
        return to_json(content)


# ---------- request and response bodies ----------


class PredictRequest(BaseModel):
    inputs: list[Any] = Field(
        description="texts; images as base64 or data URLs; table rows as objects column -> value, a number "
        'column\'s value as a JSON number or a numeric string ("17.99", as read from a CSV), finite and '
        "within float32 (±3.4e38), or null for a missing value. A lone UTF-16 surrogate in a string "
        "(\\ud800) is read as U+FFFD.",
        examples=[["a great film"], [{"price": "17.99", "color": "red"}]],
    )
    top_k: int = Field(1, ge=1, le=100, description="how many of the most likely labels to return per input")


class LabelProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    """A classifier's answer for one input."""

    label: str
    probability: float
    top_k: list[LabelProbability]


class ValuePrediction(BaseModel):
    """A regression model's answer for one input, in the target's units."""

    prediction: float


class PredictResponse(BaseModel):
    request_id: str
    model_version: str | None
    predictions: list[Prediction | ValuePrediction]


class FeedbackRequest(BaseModel):
    label: str | float = Field(
        description="the correct label (a classifier), or the correct number (a regression model)"
    )
    request_id: str | None = Field(
        None,
        description="from a /v1/predict answer; correcting the same request id and index again replaces "
        "the earlier correction (the last one wins)",
    )
    index: int = Field(0, ge=0, description="which input of that request")
    input: Any = Field(None, description="the input itself, when there is no request id")
    predicted: str | float | None = Field(
        None,
        description="what the model said, when giving the input itself: one of its labels, or a number",
    )


class FeedbackResponse(BaseModel):
    feedback_id: int
    label: str
    predicted: str | None
    model_version: str | None
    replaced: bool = Field(False, description="true when this replaced an earlier correction (answered 200)")


# ---------- the page, health and metrics ----------


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/healthz", tags=["health"], summary="The process is alive")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="A model is loaded and the batcher runs")
def readyz(request: Request) -> JSONResponse:
    service = service_of(request)
    ready = service.batcher.running
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "model_version": service.served.version_name},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", tags=["health"], summary="Prometheus metrics")
def prometheus(request: Request) -> Response:
    body, content_type = service_of(request).metrics.render()
    return Response(body, media_type=content_type)


@router.get("/v1/model", tags=["model"], summary="The model card")
def model_card(request: Request) -> dict:
    return service_of(request).model_card()


# ---------- predictions ----------


@router.post(
    "/v1/predict",
    tags=["predict"],
    response_model=PredictResponse,
    summary="Predict labels for a list of inputs (texts, base64 images or table rows)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
        }
    },
)
async def predict(request: Request) -> FastJSONResponse:
    body = await read_body(request, PredictRequest)
    service = service_of(request)
    current = service.served
    check_count(len(body.inputs), service.settings.max_inputs)
    payload, stored = await encode(service, current, body.inputs)
    return FastJSONResponse(await service.predict(current, payload, stored, len(body.inputs), body.top_k))


@router.post(
    "/v1/predict/file",
    tags=["predict"],
    response_model=PredictResponse,
    summary="Predict labels for uploaded image files (multipart field `files`, or `file`)",
)
async def predict_file(
    request: Request,
    files: Annotated[list[UploadFile] | None, File()] = None,
    file: Annotated[UploadFile | None, File()] = None,
    top_k: Annotated[int, Query(ge=1, le=100)] = 1,
) -> JSONResponse:
    service = service_of(request)
    current = service.served
    uploads = (files or []) + ([file] if file else [])
    task = current.predictor.task_module
    if not task.accepts_files:
        raise ApiError(
            415,
            "files",
            f"this model takes {task.kind} inputs; upload files to an image model, "
            "or POST JSON to /v1/predict.",
        )
    check_count(len(uploads), service.settings.max_inputs, field="files")
    contents = [await u.read() for u in uploads]
    payload, stored = await run_in_threadpool(
        task.encode_files, current.predictor, contents, service.settings, "files"
    )
    return FastJSONResponse(await service.predict(current, payload, stored, len(uploads), top_k, "files"))


async def encode(service: Service, current: Served, inputs: list, field: str = "inputs"):
    """Small requests are encoded on the event loop (a thread hop costs more than decoding an
    8x8 image or a table row); large ones in the thread pool, so the loop keeps answering."""
    encode = current.predictor.task_module.encode_request  # the task checks and encodes its own inputs
    if _approximate_bytes(inputs) <= INLINE_BYTES:
        return encode(current.predictor, inputs, service.settings, field)
    return await run_in_threadpool(encode, current.predictor, inputs, service.settings, field)


def _approximate_bytes(inputs: list) -> int:
    return sum(
        len(item) if isinstance(item, str) else 64 * len(item) if isinstance(item, dict) else 16
        for item in inputs
    )


# ---------- feedback and admin ----------


@router.post(
    "/v1/feedback",
    tags=["feedback"],
    status_code=201,
    response_model=FeedbackResponse,
    responses={200: {"model": FeedbackResponse, "description": "Replaced an earlier correction"}},
    summary="Store the correct label of a prediction (by request id) or of an input",
)
async def feedback(body: FeedbackRequest, request: Request) -> JSONResponse:
    service = service_of(request)
    require_key(request, service)
    if body.request_id is not None:
        remembered = service.recent.get(body.request_id)
        if remembered is None:
            raise ApiError(
                404,
                "request_id",
                f"no recent prediction {body.request_id!r} (this server remembers the "
                f"last {service.settings.remembered_requests:,} requests since it started, "
                "fewer when they carry large images); "
                "send the input itself in `input` instead.",
            )
        if body.index >= len(remembered.stored):
            raise ApiError(
                422,
                "index",
                f"request {body.request_id} had {len(remembered.stored)} input(s); "
                f"index must be below {len(remembered.stored)}.",
            )
        current = remembered.served
        label = checked(current, body.label, "label")
        feedback_id, replaced = await service.correct(body.request_id, remembered, body.index, label)
        predicted = remembered.predicted[body.index]
    elif body.input is not None:
        current = service.served
        _, stored = await encode(service, current, [body.input], "input")
        label = checked(current, body.label, "label")
        # what the model said is checked like a correction: one of its labels, or a finite number
        predicted = None if body.predicted is None else checked(current, body.predicted, "predicted")
        feedback_id = await run_in_threadpool(store_feedback, current, stored[0], label, predicted, None)
        replaced = False
    else:
        raise ApiError(
            422, "request_id", "give the request_id of a prediction, or the input itself in `input`."
        )
    answer = {
        "feedback_id": feedback_id,
        "label": label,
        "predicted": predicted,
        "model_version": current.version_name,
        "replaced": replaced,
    }
    return FastJSONResponse(answer, status_code=200 if replaced else 201)


def checked(served: Served, value, field: str) -> str:
    """A label (or number) sent as feedback, checked by the task; a 422 naming `field` when it isn't."""
    try:
        return served.predictor.task_module.correction(value, served.predictor.spec)
    except ValueError as exc:
        raise ApiError(422, field, str(exc)) from None


@router.get(
    "/v1/feedback",
    tags=["feedback"],
    summary="Stored feedback, newest first (with --api-key: needs the key; without: this machine only)",
)
def feedback_list(request: Request, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict:
    require_key(request, service_of(request), local_only=True)
    from modelfoundry.store.feedback import FeedbackStore, to_json

    return {"feedback": [to_json(r) for r in FeedbackStore().list(limit)]}


@router.post(
    "/v1/admin/reload", tags=["admin"], summary="Load the model the alias points at now, without downtime"
)
async def reload(request: Request) -> dict:
    service = service_of(request)
    require_key(request, service, local_only=True)
    return await service.reload(force=True)


def require_key(request: Request, service: Service, local_only: bool = False) -> None:
    """Feedback and admin routes need the API key when the server has one. Without one, the routes
    that read stored feedback or change the server (`local_only`) answer only callers on this machine."""
    api_key = service.settings.api_key
    if api_key is None:
        client = request.client.host if request.client else ""
        if local_only and client not in LOOPBACK:
            raise ApiError(
                403,
                "X-API-Key",
                f"{request.method} {request.url.path} answers only this machine when the server has no API "
                "key; start it with --api-key and send the key in the X-API-Key header.",
            )
        return
    given = request.headers.get("x-api-key")
    if given is None:
        raise ApiError(401, "X-API-Key", "this route needs an API key: send it in the X-API-Key header.")
    if not secrets.compare_digest(given.encode(), api_key.encode()):
        raise ApiError(401, "X-API-Key", "the API key is wrong.")
