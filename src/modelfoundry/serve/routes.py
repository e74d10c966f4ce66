"""Every endpoint of the service, on one APIRouter: the web page, health, metrics, the model card,
predict (JSON and file upload), feedback and reload.

A route checks the request, encodes its inputs (inputs.py) and hands them to the Service
(service.py), which it takes from `request.app.state.service`; the routes hold no state of their own.
The request and response bodies below are what the OpenAPI schema at /docs shows.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException

from modelfoundry.errors import UserError
from modelfoundry.predictor import prediction_table
from modelfoundry.serve.errors import ApiError, check_count, error_json
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


class ExplainRequest(BaseModel):
    inputs: list[Any] = Field(description="as for /v1/predict: texts, base64 images or table rows")
    label: str | None = Field(
        None,
        alias="class",
        description="explain this class's probability (default: the predicted class); not for a number",
    )
    steps: int | None = Field(
        None, ge=2, le=1024, description="integrated gradients' steps (default per input kind)"
    )


class Explanation(BaseModel):
    """Why the model said what it did of one input (keys of its kind of input: tokens, heatmap and
    heatmap_png, or contributions)."""

    model_config = {"extra": "allow"}
    explains: str
    method: str
    output: float
    baseline_output: float
    convergence_delta: float | None
    top: list[dict]


class ExplainResponse(BaseModel):
    model_version: str | None
    explanations: list[Explanation]


class FeedbackRequest(BaseModel):
    label: str | float | None = Field(
        None,
        description="the correct label (a classifier), or the correct number (a regression model); "
        "required for those",
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
        description="what the model said, when giving the input itself: one of its labels, or a number "
        "(a text generation model: its answer)",
    )
    vote: Literal["up", "down"] | None = Field(None, description="text generation: was the answer good?")
    better_answer: str | None = Field(None, description="text generation: the answer it should have given")


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
    ready = service.ready
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
    service = service_of(request)
    refuse_generator(service)
    body = await read_body(request, PredictRequest)
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
    refuse_generator(service)
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


@router.post(
    "/v1/explain",
    tags=["predict"],
    response_model=ExplainResponse,
    summary="Explain predictions: token attributions, a heat map over the image, or column contributions",
    description="The body of /v1/predict, with `class` to explain another class than the predicted one. "
    "Texts: `tokens` [{token, attribution}] by integrated gradients on the embeddings (special tokens left "
    "out); images: `heatmap` (H x W) and `heatmap_png` (the image beside its heat map, a data URL); table "
    "rows: `contributions` [{column, value, contribution}] (SHAP values for gbdt, integrated gradients "
    "otherwise). A model served from ONNX alone cannot be explained (422, field `model`).",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ExplainRequest.model_json_schema(by_alias=True)}},
        }
    },
)
async def explain(request: Request) -> FastJSONResponse:
    from modelfoundry.evaluate.explain import check_explainable

    body = await read_body(request, ExplainRequest)
    service = service_of(request)
    current = service.served
    predictor = current.predictor
    check_count(len(body.inputs), service.settings.max_inputs)
    check_explainable(predictor)
    payload, _ = await encode(service, current, body.inputs)
    task = predictor.task_module
    raw = task.explained_inputs(body.inputs)  # table rows, shown beside their columns' contributions
    explanations = await run_in_threadpool(
        task.explain_batch, predictor, payload, raw, body.label, body.steps
    )
    return FastJSONResponse({"model_version": current.version_name, "explanations": explanations})


BATCH_PATH = "/v1/predict/batch"


@router.post(
    BATCH_PATH,
    tags=["predict"],
    summary="Score a whole file: a CSV/Parquet/JSONL table or texts, or image files and zips of images",
    description="Multipart upload (field `file`, or `files` several times). The answer streams as the "
    "rows are scored, `--batch-chunk` (512) at a time: NDJSON lines, first `{rows, notes, model_version, "
    "limits}`, then per chunk `{done, rows: [...], csv}` (`rows` as `foundry predict` prints them, `csv` "
    "their lines of its `--output` file, the header in the first), then `{done, finished: true}`. An input "
    "found bad after the answer began ends it with `{done, error: {field, message}}` (`field` rows.N.COLUMN, "
    "N counting data rows from 1); one found before, such as in the first chunk, is a 4xx. `?format=csv` "
    "streams the CSV alone (a bad input then ends it with a line `error: FIELD: MESSAGE`).",
)
async def predict_batch(
    request: Request,
    files: Annotated[list[UploadFile] | None, File()] = None,
    file: Annotated[UploadFile | None, File()] = None,
    top_k: Annotated[int, Query(ge=1, le=100)] = 1,
    format: Annotated[Literal["ndjson", "csv"], Query()] = "ndjson",
) -> StreamingResponse:
    service = service_of(request)
    refuse_generator(service)
    current, settings = service.served, service.settings
    task = current.predictor.task_module
    uploads = (files or []) + ([file] if file else [])
    if not uploads:
        raise ApiError(422, "file", "upload a file in the multipart field `file` (or several as `files`).")
    names, inputs, notes = await run_in_threadpool(read_uploads, task, current.predictor, uploads, settings)
    check_count(len(inputs), settings.max_batch_rows, field="file")
    chunk = settings.batch_chunk
    try:  # the first chunk before the answer starts: most bad files fail here, with a 4xx
        first = await run_in_threadpool(encode_chunk, task, current.predictor, inputs[:chunk], settings)
    except ApiError as exc:
        raise in_file(exc, 0) from None
    start = {
        "rows": len(inputs),
        "notes": notes,
        "model_version": current.version_name,
        "limits": {"max_rows": settings.max_batch_rows, "max_bytes": settings.max_upload_bytes},
    }
    lines = scored_lines(service, current, names, inputs, top_k, first)
    if format == "csv":
        return StreamingResponse(csv_only(lines), media_type="text/csv")
    return StreamingResponse(ndjson(start, lines), media_type="application/x-ndjson")


def refuse_generator(service: Service) -> None:
    """A text generation model answers on the OpenAI-compatible routes, not the predict ones."""
    if service.engine is not None:
        raise ApiError(
            404,
            "model",
            "this model generates text: POST /v1/completions or /v1/chat/completions (OpenAI-compatible), "
            "or try it on the page at /.",
        )


def read_uploads(task, predictor, uploads: list[UploadFile], settings) -> tuple[list[str], list, list[str]]:
    """The uploads saved under their own suffix (the readers go by it), read by the task, then deleted:
    (names, inputs, notes). An error names the file as uploaded, not where it was saved."""
    folder = Path(tempfile.mkdtemp(prefix="foundry-batch-"))
    saved = []
    try:
        for i, upload in enumerate(uploads):
            name = Path(upload.filename or f"upload-{i + 1}").name
            path = folder / f"{i}{Path(name).suffix.lower()}"
            with path.open("wb") as target:
                shutil.copyfileobj(upload.file, target)
            saved.append((name, path))
        try:
            return task.batch_inputs(predictor, saved, settings)
        except ApiError:
            raise
        except UserError as exc:
            message = str(exc)
            for name, path in saved:
                message = message.replace(str(path), name)
            raise ApiError(422, "file", message) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def encode_chunk(task, predictor, inputs: list, settings):
    """One chunk of a file's inputs encoded (an error names the input in the chunk: `in_file` renames it)."""
    return task.encode_batch(predictor, inputs, settings, "rows")[0]  # feedback keeps nothing of a file


def in_file(exc: ApiError, start: int) -> ApiError:
    """An error of a chunk's input i (`rows.i...`) named by its row in the file, counting from 1."""
    head, _, index = exc.field.partition(".")
    number, _, rest = index.partition(".")
    if head != "rows" or not number.isdigit():
        return exc
    row = start + int(number) + 1
    where = f"row {row}" + (f", column {rest!r}" if rest else "")
    return ApiError(exc.status, f"rows.{row}" + (f".{rest}" if rest else ""), f"{where}: {exc.message}")


async def scored_lines(service: Service, current: Served, names: list[str], inputs: list, top_k: int, first):
    """(rows as printed, their CSV lines) per chunk, the first chunk already encoded; an error as an ApiError
    yielded in their place, which ends the file."""
    settings, task = service.settings, current.predictor.task_module
    chunk = settings.batch_chunk
    for start in range(0, len(inputs), chunk):
        size = min(chunk, len(inputs) - start)
        try:
            payload = (
                first
                if start == 0
                else await run_in_threadpool(
                    encode_chunk, task, current.predictor, inputs[start : start + size], settings
                )
            )
            answers = await service.answers(current, payload, size, top_k, "rows", settings.max_batch_size)
        except ApiError as exc:
            yield in_file(exc, start)
            return
        table = prediction_table(task, answers, names[start : start + size], top_k)
        yield table.to_dict(orient="records"), table.to_csv(index=False, header=start == 0)


async def ndjson(start: dict, lines):
    yield to_json(start) + b"\n"
    done = 0
    async for item in lines:
        if isinstance(item, ApiError):
            yield to_json({"done": done, **error_json(item.field, item.message)}) + b"\n"
            return
        rows, csv = item
        done += len(rows)
        yield to_json({"done": done, "rows": rows, "csv": csv}) + b"\n"
    yield to_json({"done": done, "finished": True}) + b"\n"


async def csv_only(lines):
    async for item in lines:
        if isinstance(item, ApiError):
            yield f"error: {item.field}: {item.message}\n"
            return
        yield item[1]


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


# ---------- recommendation ----------


class RecommendRequest(BaseModel):
    user: str | int = Field(description="the user id; one the model never saw gets the most popular items")
    k: int = Field(10, description="how many items, 1 to the number of items")
    exclude_seen: bool = Field(True, description="leave out the items the user already interacted with")


class SimilarRequest(BaseModel):
    item: str | int = Field(description="the item id")
    k: int = Field(10, description="how many similar items")


@router.post("/v1/recommend", tags=["predict"], summary="The k best items for a user (recommendation models)")
async def recommend(request: Request) -> FastJSONResponse:
    body = await read_body(request, RecommendRequest)
    current = service_of(request).served
    # one matrix product and a top-k: cheaper than a hop to the thread pool
    answer = current.predictor.recommend([body.user], body.k, body.exclude_seen)[0]
    return FastJSONResponse({**answer, "model_version": current.version_name})


@router.post("/v1/similar", tags=["predict"], summary="The k items most like an item (recommendation models)")
async def similar(request: Request) -> FastJSONResponse:
    body = await read_body(request, SimilarRequest)
    current = service_of(request).served
    items = current.predictor.similar(body.item, body.k)
    return FastJSONResponse({"item": str(body.item), "items": items, "model_version": current.version_name})


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
    if service.engine is not None:  # a text generation model: a vote and a better answer, not a label
        from modelfoundry.serve.generation_feedback import generation_feedback

        return FastJSONResponse(*await generation_feedback(service, body))
    if body.label is None:
        raise ApiError(422, "label", "Field required: send the correct label (or number) in `label`.")
    if body.request_id is not None:
        remembered = service.recalled(
            body.request_id,
            body.index,
            "prediction",
            ", fewer when they carry large images); send the input itself in `input` instead.",
            "input(s)",
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
    authorization = request.headers.get("authorization", "")
    if given is None and authorization[:7].lower() == "bearer ":  # how OpenAI's clients send their key
        given = authorization[7:].strip()
    if given is None:
        raise ApiError(401, "X-API-Key", "this route needs an API key: send it in the X-API-Key header.")
    if not secrets.compare_digest(given.encode(), api_key.encode()):
        raise ApiError(401, "X-API-Key", "the API key is wrong.")
