"""The state of one running service: the model it serves, its settings, the micro-batcher, the recent
predictions that feedback can name by request id, reloading when the alias moves, and the model card.

create_app (app.py) makes one Service and puts it on `app.state.service`; the routes (routes.py) read
it from there. It knows nothing of HTTP routes: the routes check and encode a request, the Service
runs it through the model and remembers the answer.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from modelfoundry.errors import UserError
from modelfoundry.predictor import Predictor, load, package_folder
from modelfoundry.runfiles import atomic_write
from modelfoundry.serve.batching import MicroBatcher
from modelfoundry.serve.errors import ApiError
from modelfoundry.serve.metrics import ServeMetrics

log = logging.getLogger("modelfoundry.serve")


@dataclass
class Settings:
    model: str  # alias, version (v3), run id or run folder
    backend: str = "auto"  # auto: torch when the package has PyTorch weights, else onnx
    api_key: str | None = None  # required for feedback and admin routes when set
    max_batch_size: int = 64
    max_wait_ms: float = 0.0
    max_inputs: int = 64  # per request
    max_body_bytes: int = 10 * 2**20
    max_upload_bytes: int = 100 * 2**20  # a file sent to POST /v1/predict/batch
    max_batch_rows: int = 100_000  # inputs (rows, texts, images) in one such file
    batch_chunk: int = 512  # inputs of such a file read, encoded and answered per step (a progress line)
    max_image_pixels: int = 4096 * 4096  # decoded size; larger images are refused before decoding
    max_request_pixels: int = 4 * 4096 * 4096  # all images of one request together, also before decoding
    cors_origins: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"  # the address served on; its name is accepted in the Host header
    allowed_hosts: list[str] = field(default_factory=list)  # more Host names to accept (`*.example.com`)
    watch_seconds: float = 0.0  # poll the alias and reload on change; 0 = only POST /v1/admin/reload
    remembered_requests: int = 10_000  # recent predictions kept in memory for feedback by request id
    remembered_bytes: int = 256 * 2**20  # ... and at most this many bytes of their images
    # text generation (serve/openai.py)
    max_new_tokens_limit: int = 512  # most new tokens one choice may ask for (max_tokens)
    max_sequences: int = 16  # sequences decoded together (KV-cache slots); more wait for a free one
    precision: str = "fp32"  # "bf16": a text generation model's weights in bfloat16 (faster, may differ)


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


@dataclass(slots=True)
class Remembered:
    """A recent prediction, for feedback by request id."""

    stored: list[dict]  # what feedback keeps of each input
    predicted: list[str]  # what the model said of each
    served: Served  # the model that said it
    corrections: dict[int, int] = field(default_factory=dict)  # input index -> its feedback id
    lock: asyncio.Lock | None = None  # made when the first correction comes


def load_served(ref: str, backend: str = "auto", precision: str = "fp32") -> Served:
    """Resolve an alias / version / run to its package and load it. Raises UserError when it can't.
    precision "bf16": a text generation model's weights in bfloat16 (its `with_precision`)."""
    from modelfoundry.store.models import ModelStore

    store = ModelStore()
    try:
        version = store.get(ref)
        folder, alias = Path(version.path), ref if ref in store.aliases(version.id) else None
    except UserError:
        if not Path(ref).is_dir():
            raise
        folder, version, alias = package_folder(ref), None, None  # a package outside the registry
    predictor = load(folder, backend=backend)
    if precision != "fp32":
        if not hasattr(predictor, "with_precision") or predictor.backend != "torch":
            raise UserError(
                f"--precision {precision}: only a text generation model on the torch backend takes another "
                f"precision; {ref} is a {predictor.task} model ({predictor.backend}). Leave --precision out."
            )
        predictor.with_precision(precision)
    return Served(predictor, version, alias)


class Service:
    """What every route shares.

    `served` is swapped whole on reload; each queued request carries the Served that encoded it,
    so it finishes on that model. `recent` maps a request id to what feedback needs of it
    (Remembered), oldest first, and forgets the oldest past `remembered_requests` or `remembered_bytes`.
    """

    def __init__(self, settings: Settings, served: Served):
        self.settings, self.served = settings, served
        self.metrics = ServeMetrics()
        self.batcher = MicroBatcher(
            _run_batch, settings.max_batch_size, settings.max_wait_ms, self.metrics.batch_size.observe
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        from modelfoundry.serve.openai import make_engine

        self.engine = make_engine(served, settings, self.metrics)  # None unless the model generates text
        if self.engine is not None:
            self.metrics.generating(lambda: self.engine)
        self.recent: OrderedDict[str, Remembered] = OrderedDict()
        self.recent_bytes = 0  # image bytes kept in `recent`

    async def predict(
        self, served: Served, payload, stored: list[dict], size: int, top_k: int, field: str = "inputs"
    ) -> dict:
        """Queue for the model, then answer. The answer is built here, not by a response model: with
        a small model, per-request overhead is what limits throughput (bench/serve_load.py)."""
        predictions = await self.answers(served, payload, size, top_k, field)
        task = served.predictor.task_module
        request_id = secrets.token_hex(8)
        self._remember(request_id, stored, [task.predicted(p) for p in predictions], served)
        return {"request_id": request_id, "model_version": served.version_name, "predictions": predictions}

    async def answers(
        self, served: Served, payload, size: int, top_k: int, field: str = "inputs", step: int | None = None
    ) -> list[dict]:
        """Queue for the model, in pieces of `step` inputs when given (a file's chunk: other requests' inputs
        are batched between its pieces rather than wait behind all of it); the task's answer per input
        (counted for /metrics)."""
        step = step or size
        if step >= size:
            outputs = await self.batcher.submit(served, payload, size)
        else:
            pieces = [
                self.batcher.submit(served, payload[i : i + step], min(step, size - i))
                for i in range(0, size, step)
            ]
            outputs = np.concatenate(await asyncio.gather(*pieces))
        check_finite(outputs, field)
        predictions = served.predictor.task_module.answer(outputs, served.predictor.spec, top_k)
        for prediction in predictions:
            if "label" in prediction:  # a regression model's numbers are not counted by label
                self.metrics.predicted(prediction["label"])
        return predictions

    def _remember(self, request_id: str, stored: list[dict], predicted: list[str], served: Served) -> None:
        self.recent[request_id] = Remembered(stored, predicted, served)
        self.recent_bytes += _image_bytes(stored)
        while (
            len(self.recent) > self.settings.remembered_requests
            or self.recent_bytes > self.settings.remembered_bytes
        ):
            self.recent_bytes -= _image_bytes(self.recent.popitem(last=False)[1].stored)

    def recalled(self, request_id: str, index: int, what: str, forgotten: str, items: str) -> Remembered:
        """The recent answer `request_id` that feedback refers to, with its `index` checked: a 404 naming what
        to send instead (`forgotten`) when it is no longer remembered, a 422 when `index` is past its `items`.
        `what`: the answer's name in the messages ("prediction", "answer")."""
        from modelfoundry.serve.errors import ApiError

        remembered = self.recent.get(request_id)
        if remembered is None:
            raise ApiError(
                404,
                "request_id",
                f"no recent {what} {request_id!r} (this server remembers the last "
                f"{self.settings.remembered_requests:,} since it started{forgotten}",
            )
        if index >= len(remembered.stored):
            raise ApiError(
                422,
                "index",
                f"{what} {request_id} had {len(remembered.stored)} {items}; index must be below "
                f"{len(remembered.stored)}.",
            )
        return remembered

    async def correct(
        self, request_id: str, remembered: Remembered, index: int, label: str
    ) -> tuple[int, bool]:
        """Store the correct label of input `index` of a recent prediction. The same input corrected
        again replaces its first correction (the last one wins: a slip of the hand can be undone, and a
        retried request stores nothing twice). Returns (feedback id, whether it replaced one)."""
        if remembered.lock is None:
            remembered.lock = asyncio.Lock()
        async with remembered.lock:  # a repeat sent at the same time waits, then finds the first's row
            earlier = remembered.corrections.get(index)
            if earlier is not None and await run_in_threadpool(relabel_feedback, earlier, label):
                return earlier, True
            item, predicted = remembered.stored[index], remembered.predicted[index]
            feedback_id = await run_in_threadpool(
                store_feedback, remembered.served, item, label, predicted, request_id
            )
            remembered.corrections[index] = feedback_id
            return feedback_id, False

    async def reload(self, force: bool) -> dict:
        """Load what the alias (or the model setting) points at now; swap it in when it changed, or always
        when forced. Raises ApiError 409 when it can't be loaded, and the old model keeps serving."""
        previous = self.served
        ref = previous.alias or self.settings.model
        try:
            fresh = await run_in_threadpool(load_served, ref, self.settings.backend, self.settings.precision)
        except UserError as exc:
            raise ApiError(409, "model", f"could not load {ref}: {exc}") from None
        changed = fresh.version_name != previous.version_name
        if changed or force:
            self._swap_engine(fresh)
            self.served = fresh  # requests already queued finish on the model that encoded them
            log.info("serving %s (was %s)", fresh.version_name, previous.version_name)
        return {
            "reloaded": changed or force,
            "model_version": fresh.version_name,
            "previous": previous.version_name,
        }

    def _swap_engine(self, fresh: Served) -> None:
        """A generation model gets its own decode engine; the old one finishes the answers it has begun."""
        from modelfoundry.serve.openai import make_engine

        old, self.engine = self.engine, make_engine(fresh, self.settings, self.metrics)
        if self.engine is not None:
            self.engine.start()
            if old is None:
                self.metrics.generating(lambda: self.engine)
        if old is not None:
            old.retire()

    @property
    def ready(self) -> bool:
        return self.batcher.running and (self.engine is None or self.engine.running)

    async def watch(self) -> None:
        """Poll the alias every `watch_seconds` and reload when it points at another version."""
        from modelfoundry.store.models import ModelStore

        while True:
            await asyncio.sleep(self.settings.watch_seconds)
            try:
                ref = self.served.alias or self.settings.model
                version = await run_in_threadpool(ModelStore().get, ref)
                if version.name != self.served.version_name:
                    await self.reload(force=False)
            except (UserError, ApiError) as exc:
                log.warning("alias watch: %s", getattr(exc, "message", exc))

    def model_card(self) -> dict:
        served, settings = self.served, self.settings
        spec, task = served.predictor.spec, served.predictor.task_module
        card = {
            "version": served.version_name,
            "alias": served.alias,
            "run_id": spec.get("run_id"),
            "task": spec["task"],
            "kind": task.kind,
            "model": spec["model"]["name"],
            "backend": served.predictor.backend,
            "variant": spec.get("variant", {}).get("kind", "base"),
            "labels": served.predictor.labels,
            "created": spec.get("created"),
            "metrics": (served.version.metrics if served.version is not None else None)
            or {"test_accuracy": spec.get("test_accuracy")},
            "feedback_requires_key": settings.api_key is not None,
            "max_inputs": settings.max_inputs,
            "batch": {
                "suffixes": list(task.batch_suffixes),
                "multiple": task.batch_multiple,
                "max_rows": settings.max_batch_rows,
                "max_bytes": settings.max_upload_bytes,
            },
        }
        if self.engine is not None:  # a text generation model: the page shows a prompt box
            card |= {
                "generates": True,
                # a chat template: the page holds a conversation and asks /v1/chat/completions
                "chat": bool(getattr(served.predictor.tokenizer, "chat_template", None)),
                "context": self.engine.max_len,
                "max_new_tokens_limit": settings.max_new_tokens_limit,
            }
        return {**card, **task.card(spec)}


def store_feedback(
    served: Served, item: dict, label: str, predicted: str | None, request_id: str | None
) -> int:
    """Store the correct label of one input (as kept by inputs.py); returns the feedback id. Runs in a
    thread: it writes a file and the database."""
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


def check_finite(outputs: np.ndarray, field: str) -> None:
    """No answer from NaN or infinity (the JSON reply could not even carry it): a 422 naming the input,
    which must lie far outside what the model was trained on."""
    finite = np.isfinite(outputs)
    if not finite.all():
        i = int(np.argmin(finite.reshape(len(outputs), -1).all(1)))
        raise ApiError(
            422,
            f"{field}.{i}",
            "the model's output for this input is not a finite number (NaN or infinity), so there is "
            "no answer to give; the input is probably far outside what the model was trained on.",
        )


def relabel_feedback(feedback_id: int, label: str) -> bool:
    """Runs in a thread; False when the row is gone."""
    from modelfoundry.store.feedback import FeedbackStore

    return FeedbackStore().relabel(feedback_id, label)


def _run_batch(served: Served, payloads: list) -> np.ndarray:
    """The batcher's model call: the requests' inputs joined into one batch by the predictor."""
    return served.predictor.proba(served.predictor.join(payloads))


def _image_bytes(stored: list[dict]) -> int:
    return sum(len(item.get("image_bytes", b"")) for item in stored)
