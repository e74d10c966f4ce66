"""The model package: `model/` = `model.safetensors` + `model.json` (architecture, preprocessing,
labels). `load()` turns it into a Predictor without the config or the data, and never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from modelfoundry.data import images, tabular
from modelfoundry.errors import UserError
from modelfoundry.models.registry import build_model
from modelfoundry.runfiles import atomic_folder, package_folder

FORMAT = "modelfoundry.model/1"


def save_package(
    folder: Path, model: torch.nn.Module, spec: dict, files: dict[str, str] | None = None
) -> Path:
    """Write weights and description. `spec` holds task, model {name, options}, input_shape, labels, preprocessing;
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
    pre, options = spec["preprocessing"], dict(spec["model"]["options"])
    text_spec = {k: pre[k] for k in ("vocab_size", "pad_id")} if pre["kind"] == "text" else None
    if spec["model"]["name"] == "pretrained":  # the architecture from the package; weights come next
        options.update(path=str(folder / "encoder"), pretrained_weights=False)
    model = build_model(
        spec["model"]["name"], tuple(spec["input_shape"]), len(spec["labels"]), text_spec, **options
    )
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return Predictor(model.to(device).eval(), spec, folder)


class Predictor:
    """A trained model with its preprocessing: raw inputs in, labels or probabilities out."""

    def __init__(self, model: torch.nn.Module, spec: dict, path: Path | None = None):
        self.model = model
        self.spec = spec
        self.path = path
        self.labels: list[str] = spec["labels"]
        self.task: str = spec["task"]
        self._tokenizer = None

    def __repr__(self) -> str:
        return f"Predictor(task={self.task!r}, model={self.spec['model']['name']!r}, labels={self.labels})"

    @property
    def backend(self) -> str:
        return "onnx" if type(self.model).__name__ == "OnnxModel" else "torch"

    def encode(self, inputs, origin: str = "input") -> torch.Tensor:
        """Raw inputs -> the model's input tensor (N, ...).

        Images: file paths, a folder, PIL images, or arrays (H, W) / (C, H, W) in [0, 1].
        Tables: a DataFrame, a dict or list of dicts, or a .csv/.parquet/.jsonl path.
        """
        pre = self.spec["preprocessing"]
        if pre["kind"] == "text":
            return self._tokenize(inputs)
        if pre["kind"] == "table":
            frame = read_rows(inputs)
            return torch.from_numpy(tabular.TableEncoder(pre).transform(frame, origin))
        return torch.from_numpy(np.stack([self._image(item) for item in expand_images(inputs)]))

    def _tokenize(self, inputs) -> list[torch.Tensor]:
        """Texts -> token ids, scrubbed of PII first when the model was trained on scrubbed text."""
        from modelfoundry.data import text
        from modelfoundry.data.privacy import scrub_texts

        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise UserError(
                f"text input {bad[0] + 1} is {type(texts[bad[0]]).__name__}, not a string; a text model "
                "takes a string or a list of strings."
            )
        if not texts:
            raise UserError("no inputs given.")
        pre = self.spec["preprocessing"]
        if pre.get("pii") in ("redact", "drop"):  # a dropped row can't be dropped here; redact it instead
            texts, _, _ = scrub_texts(texts, "redact")
        if self._tokenizer is None:
            self._tokenizer = text.load_tokenizer(self.path / "tokenizer.json")
        ids, _ = text.tokenize(self._tokenizer, texts, pre["max_length"])
        return ids

    def _image(self, item) -> np.ndarray:
        pre = self.spec["preprocessing"]
        size, channels = tuple(pre["size"]), pre["channels"]
        if isinstance(item, (str, Path)):
            item = images.read_image(Path(item))
        if isinstance(item, Image.Image):
            return images.to_array(item, size, channels)
        array = np.asarray(item, dtype=np.float32)
        array = array[None] if array.ndim == 2 else array
        if array.shape != (channels, *size):
            raise UserError(
                f"image array of shape {array.shape} does not match the model's input "
                f"{(channels, *size)} (C, H, W); pass a file or PIL image to have it resized."
            )
        return array

    def predict_proba(self, inputs, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, num_classes), columns in the order of `self.labels`."""
        return self.proba(
            self.encode(inputs, origin=str(inputs) if isinstance(inputs, (str, Path)) else "input"),
            batch_size,
        )

    @torch.inference_mode()
    def proba(self, x: torch.Tensor | list[torch.Tensor], batch_size: int = 256) -> np.ndarray:
        """Probabilities of inputs already through `encode`: a tensor (N, ...) or a list of N token-id tensors."""
        device = next(self.model.parameters()).device
        if isinstance(x, list):  # token ids: predict shortest first to pad least, then restore the order
            from modelfoundry.data.text import TextData
            from modelfoundry.training.loop import predict_logits

            data, order = TextData(
                x, torch.zeros(len(x)), self.spec["preprocessing"]["pad_id"], device
            ).sorted_by_length()
            probabilities = torch.softmax(predict_logits(self.model, data, batch_size), 1).cpu().numpy()
            return probabilities[np.argsort(order)]
        out = [
            torch.softmax(self.model(x[i : i + batch_size].to(device)).float(), 1).cpu()
            for i in range(0, len(x), batch_size)
        ]
        return torch.cat(out).numpy()

    def predict(self, inputs) -> list[str]:
        """The most likely label of each input."""
        return [self.labels[i] for i in self.predict_proba(inputs).argmax(1)]


def expand_images(inputs) -> list:
    """A path, a folder (searched recursively) or a list of either / of images -> a flat list."""
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    flat = []
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            found = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in images.IMAGE_SUFFIXES)
            if not found:
                raise UserError(
                    f"{item}: no images in this folder ({', '.join(sorted(images.IMAGE_SUFFIXES))})."
                )
            flat += found
        elif isinstance(item, (str, Path)) and not Path(item).is_file():
            raise UserError(f"{item}: no such file.")
        else:
            flat.append(item)
    if not flat:
        raise UserError("no inputs given.")
    return flat


def read_rows(inputs) -> pd.DataFrame:
    if isinstance(inputs, pd.DataFrame):
        return inputs.reset_index(drop=True)
    if isinstance(inputs, dict):
        return pd.DataFrame([inputs])
    if isinstance(inputs, (str, Path)):
        path = Path(inputs)
        if not path.is_file():
            raise UserError(f"{path}: no such file.")
        return tabular.read_table(path)
    if isinstance(inputs, (list, tuple)) and all(isinstance(r, dict) for r in inputs):
        return pd.DataFrame(list(inputs))
    raise UserError(
        "table inputs must be a DataFrame, a dict, a list of dicts, or a .csv/.parquet/.jsonl path."
    )
