"""ONNX export of a packaged model, refused unless ONNX Runtime agrees with PyTorch.

The graph takes the model's input tensor (images (B, C, H, W), table features (B, F), or token
ids (B, T)) with dynamic batch and sequence axes; preprocessing stays outside the graph, in the
package beside it (model.json, tokenizer.json). Parity is measured on held-out examples of the
run (`heldout.safetensors`, written by training), or on synthetic inputs for a bare package.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from modelfoundry.errors import UserError
from modelfoundry.onnx_runtime import OnnxModel
from modelfoundry.predictor import load
from modelfoundry.runfiles import HELDOUT, atomic_path, atomic_write_json, load_sample, run_folder

PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| of any class probability of any held-out example
OPSET = 18


def export_onnx(run: str | Path, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Write `model/model.onnx` for a run and record the export in model.json; returns that record."""
    predictor = load(run)
    folder = predictor.path
    if callable(getattr(predictor, "generate", None)):  # a text generator: a decoder graph with pasts
        return export_generator(predictor, tolerance)
    if getattr(predictor.model, "onnx_refusal", None):  # a family with no ONNX converter here says why
        raise UserError(f"{folder}: {predictor.model.onnx_refusal}")
    inputs, source = heldout_inputs(run_folder(folder), predictor.spec)
    with atomic_path(folder / "model.onnx") as tmp:  # an error leaves no model.onnx, or the old one
        started = time.perf_counter()
        exporter = _export(predictor.model.cpu().eval(), inputs[:2], tmp, text=inputs.dtype == torch.long)
        seconds = time.perf_counter() - started
        difference = max_probability_difference(
            predictor.model, OnnxModel(tmp), inputs, predictor.task_module
        )
        if not difference <= tolerance:  # NaN fails too
            raise UserError(
                f"{folder}: the ONNX graph's probabilities differ from PyTorch's by up to {difference:.2e} "
                f"on {len(inputs)} {source} examples, more than the {tolerance:g} allowed; model.onnx was "
                "not written. Report the model family as a bug, or pass --tolerance if the gap is acceptable."
            )
    record = {
        "file": "model.onnx",
        "bytes": (folder / "model.onnx").stat().st_size,
        "opset": OPSET,
        "exporter": exporter,
        "export_seconds": round(seconds, 2),
        "parity": {
            "max_abs_probability_difference": difference,
            "tolerance": tolerance,
            "examples": len(inputs),
            "inputs": source,
        },
    }
    spec_path = folder / "model.json"
    spec = json.loads(spec_path.read_text())
    spec["onnx"] = record
    atomic_write_json(spec_path, spec)
    return record


def export_generator(package, tolerance: float) -> dict:
    """`model/model.onnx` of a text generation package: the GPT as a decoder with past keys and values
    (compress/gpt_onnx.py), refused unless its next-token probabilities match PyTorch's on seeded prompts fed
    whole and then token by token."""
    from modelfoundry.compress import gpt_onnx

    folder, model = package.path, package.model.cpu().eval()
    generator = torch.Generator().manual_seed(0)
    length = max(1, min(16, model.config.block_size - gpt_onnx.PARITY_STEPS))
    prompts = torch.randint(0, model.config.vocab_size, (4, length), generator=generator)
    with atomic_path(folder / "model.onnx") as tmp:
        started = time.perf_counter()
        gpt_onnx.export_gpt(model, tmp)
        seconds = time.perf_counter() - started
        difference = gpt_onnx.parity(model, gpt_onnx.session(tmp), prompts)
        if not difference <= tolerance:
            raise UserError(
                f"{folder}: the ONNX graph's next-token probabilities differ from PyTorch's by up to "
                f"{difference:.2e}, more than the {tolerance:g} allowed; model.onnx was not written."
            )
    record = {
        "file": "model.onnx",
        "bytes": (folder / "model.onnx").stat().st_size,
        "opset": gpt_onnx.OPSET,
        "exporter": "torchscript",
        "graph": "decoder with past keys/values: "
        + ", ".join(gpt_onnx.INPUTS)
        + " -> "
        + ", ".join(gpt_onnx.OUTPUTS),
        "export_seconds": round(seconds, 2),
        "parity": {
            "max_abs_probability_difference": difference,
            "tolerance": tolerance,
            "examples": len(prompts),
            "inputs": f"seeded prompts of {length} tokens + {gpt_onnx.PARITY_STEPS} fed one by one",
        },
    }
    spec_path = folder / "model.json"
    atomic_write_json(spec_path, {**json.loads(spec_path.read_text()), "onnx": record})
    return record


def heldout_inputs(run: Path, spec: dict, synthetic: int = 64) -> tuple[torch.Tensor, str]:
    """The run's held-out model inputs, or seeded synthetic ones shaped like them."""
    sample = load_sample(run, HELDOUT)
    if sample is not None:
        return sample["inputs"], "held-out"
    from modelfoundry.tasks import task_of

    generator = torch.Generator().manual_seed(0)
    return task_of(spec).synthetic_inputs(spec, synthetic, generator), "synthetic"


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, text: bool) -> str:
    """Write one self-contained .onnx file (weights inside, not in a side file); the torch.export-based
    exporter first, the TorchScript one for what it cannot capture (packed LSTMs)."""
    import tempfile

    import onnx

    axes = {"input": {0: "batch", 1: "tokens"} if text else {0: "batch"}, "logits": {0: "batch"}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" etc.
    errors = []
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings(), tempfile.TemporaryDirectory() as scratch:
                warnings.simplefilter("ignore")
                exported = Path(scratch) / "model.onnx"
                torch.onnx.export(
                    model,
                    (example,),
                    str(exported),
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes=axes,
                    opset_version=OPSET,
                    dynamo=dynamo,
                    verbose=False,
                )
                onnx.save_model(onnx.load(str(exported)), str(path))  # pulls side-file weights into the file
            return "torch.export" if dynamo else "torchscript"
        except Exception as exc:  # noqa: BLE001  (either exporter raises many types; both failing is the error)
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise UserError(f"ONNX export failed with both PyTorch exporters: {' | '.join(errors)}")


@torch.inference_mode()
def max_probability_difference(
    reference: torch.nn.Module,
    candidate: torch.nn.Module,
    inputs: torch.Tensor,
    task=None,
    batch_size: int = 64,
) -> float:
    """The largest difference between what two models predict (the task's `parity_view`: probabilities,
    or the standardised value of a regression model)."""
    if task is None:
        from modelfoundry.tasks import get_task

        task = get_task("image_classification")
    worst = 0.0
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        p = task.parity_view(reference(batch))
        q = task.parity_view(candidate(batch))
        worst = max(worst, float(np.abs((p - q).numpy()).max()))
    return worst
