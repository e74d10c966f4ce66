"""The model package: `model/` = `model.safetensors` + `model.json` (architecture, preprocessing,
labels). `load()` turns it into a Predictor without the config or the data, and never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from modelfoundry.builder import model_from_spec
from modelfoundry.errors import UserError
from modelfoundry.models.registry import family_function, family_of
from modelfoundry.runfiles import atomic_folder, package_folder
from modelfoundry.tasks import task_of

FORMAT = "modelfoundry.model/1"


def save_package(
    folder: Path, model: torch.nn.Module, spec: dict, files: dict[str, str] | None = None
) -> Path:
    """Write weights and description. `spec` holds task, model {name, options}, input_shape, labels,
    preprocessing;
    `files` maps relative paths to text the model needs besides (tokenizer.json, encoder/config.json).

    The package is built in a temporary folder and renamed into place, so a run killed while
    writing leaves either no package or a complete one, never a torn file.
    """
    with atomic_folder(folder) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(tmp / "model.safetensors"),
        )
        (tmp / "model.json").write_text(json.dumps({"format": FORMAT, **spec}, indent=2))
        for name, content in (files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(content)
    return folder


def load(path: str | Path, device: str = "cpu", backend: str = "auto") -> Predictor:
    """Load a packaged model from a run folder (or its `model/` folder).

    Args:
        backend: "torch"; "onnx" to run `model.onnx` (from `foundry export` or `foundry compress`) in
            ONNX Runtime; "auto" (default): torch when the package has PyTorch weights, else onnx.
    """
    folder = package_folder(path)
    spec = json.loads((folder / "model.json").read_text())
    if spec.get("format") != FORMAT:
        raise UserError(
            f"{folder}/model.json: format {spec.get('format')!r} is not {FORMAT!r}; "
            "retrain with this version of modelfoundry."
        )
    if backend not in ("auto", "torch", "onnx"):
        raise UserError(f"backend {backend!r} is not one of auto, torch, onnx.")
    if "ensemble" in spec:  # a package of packages (ensemble.py): each member loads itself
        from modelfoundry.ensemble import load_ensemble

        return load_ensemble(folder, spec, device, backend)
    has_torch = (folder / "model.safetensors").is_file()
    backend = ("torch" if has_torch else "onnx") if backend == "auto" else backend
    if backend == "torch" and not has_torch:
        raise UserError(
            f"{folder}: this package ({spec.get('variant', {}).get('kind', 'ONNX')} variant) has only "
            "model.onnx; load it with backend='onnx' (`--backend onnx`)."
        )
    if backend == "onnx":
        from modelfoundry.onnx_runtime import OnnxModel

        if not (folder / "model.onnx").is_file():
            raise UserError(
                f"{folder}: no model.onnx yet. Export it with `foundry export {path} --format onnx`."
            )
        return Predictor(OnnxModel(folder / "model.onnx"), spec, folder)
    family = family_of(spec["model"]["name"])
    if family.loads:  # the family reads its own package (a LoRA adapter over a base model it names)
        model = family_function(spec["model"]["name"], family.loads)(folder)
        return task_of(spec).predictor(model.to(device).eval(), spec, folder)
    options = (
        family_function(spec["model"]["name"], family.from_package)(folder) if family.from_package else {}
    )
    model = model_from_spec(spec, **options)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return task_of(spec).predictor(model.to(device).eval(), spec, folder)


class Predictor:
    """A trained model with its preprocessing: raw inputs in, labels, probabilities or values out.

    The task of the package (tasks/) encodes the inputs and reads the model's outputs, for this
    class, `foundry predict` and the HTTP service alike."""

    def __init__(self, model: torch.nn.Module, spec: dict, path: Path | None = None):
        self.model = model
        self.spec = spec
        self.path = path
        self.labels: list[str] = spec["labels"]
        self.task: str = spec["task"]
        self.task_module = task_of(spec)
        self._tokenizer = None
        self.extras: dict = {}  # what the task reads once from the package (recommendation: who saw what)

    def __repr__(self) -> str:
        return f"Predictor(task={self.task!r}, model={self.spec['model']['name']!r}, labels={self.labels})"

    @property
    def backend(self) -> str:
        return "onnx" if type(self.model).__name__ == "OnnxModel" else "torch"

    def tokenizer(self):
        """The package's tokenizer (text models), loaded once."""
        if self._tokenizer is None:
            from modelfoundry.data import text

            self._tokenizer = text.load_tokenizer(self.path / "tokenizer.json")
        return self._tokenizer

    def encode(self, inputs, origin: str = "input") -> torch.Tensor | list[torch.Tensor]:
        """Raw inputs -> the model's input tensor (N, ...), or token-id tensors for a text model.

        Images: file paths, a folder, PIL images, or arrays (H, W) / (C, H, W) in [0, 1].
        Tables: a DataFrame, a dict or list of dicts, or a .csv/.parquet/.jsonl path.
        Texts: a string or a list of strings.
        """
        return self.task_module.encode_inputs(self, inputs, origin)

    def predictions(self, inputs, batch_size: int = 256) -> np.ndarray:
        """What the task predicts for raw inputs: class probabilities (N, C) or values (N,)."""
        origin = str(inputs) if isinstance(inputs, (str, Path)) else "input"
        return self.run(self.encode(inputs, origin=origin), batch_size)

    def predict_proba(self, inputs, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, num_classes), columns in the order of `self.labels`."""
        if not self.task_module.is_classifier:
            raise UserError(
                f"predict_proba: a {self.task} model predicts values, not classes; use predict()."
            )
        return self.predictions(inputs, batch_size)

    @torch.inference_mode()
    def run(self, x: torch.Tensor | list[torch.Tensor], batch_size: int = 256) -> np.ndarray:
        """Predictions of inputs already through `encode`: a tensor (N, ...) or a list of N token-id
        tensors."""
        device = next(self.model.parameters()).device
        if isinstance(x, list):  # token ids: predict shortest first to pad least, then restore the order
            from modelfoundry.data.text import TextData
            from modelfoundry.training.loop import predict_logits

            data, order = TextData(
                x, torch.zeros(len(x)), self.spec["preprocessing"]["pad_id"], device
            ).sorted_by_length()
            return self.task_module.predictions(predict_logits(self.model, data, batch_size), self.spec)[
                np.argsort(order)
            ]
        outputs = [
            self.model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
        ]
        predictions = self.task_module.predictions(torch.cat(outputs), self.spec)
        policy = self.spec.get("threshold_policy")
        if policy:  # per-group decision thresholds (evaluate/thresholds.py), the group read from the rows
            from modelfoundry.evaluate.thresholds import apply

            predictions = apply(
                predictions, self.task_module.encoded_groups(self.spec, x, policy["column"]), policy
            )
        return predictions

    proba = run  # the name the service and compress/ used when every model was a classifier

    def join(self, payloads: list):
        """Several requests' encoded inputs as one batch for `run`: token-id lists joined, tensors
        concatenated (an ensemble joins each member's)."""
        return [ids for p in payloads for ids in p] if isinstance(payloads[0], list) else torch.cat(payloads)

    def recommend(self, users, k: int = 10, exclude_seen: bool = True) -> list[dict]:
        """The k best items for each user (a recommendation model): per user {"user", "items": [{"item",
        "score"}, ...], "cold_start"}; a user the model never saw gets the most popular items, and says so."""
        return self.task_module.recommend(
            self, [users] if isinstance(users, (str, int)) else users, k, exclude_seen
        )

    def similar(self, item, k: int = 10) -> list[dict]:
        """The k items most like `item` (a recommendation model): [{"item", "score"}, ...]."""
        return self.task_module.similar(self, item, k)

    def predict(self, inputs) -> list:
        """The most likely label of each input (classification), or the predicted value (regression)."""
        predictions = self.predictions(inputs)
        if self.task_module.is_classifier:
            return [self.labels[i] for i in predictions.argmax(1)]
        return [float(v) for v in predictions]


def prediction_table(task, answers: list[dict], names: list[str], top_k: int):
    """The rows of `foundry predict`'s table and CSV (and of a file scored by `POST /v1/predict/batch`):
    the input's name, then what the task prints of its answer."""
    import pandas as pd

    return pd.DataFrame(
        [{"input": name, **task.printed(answer, top_k)} for name, answer in zip(names, answers)]
    )
