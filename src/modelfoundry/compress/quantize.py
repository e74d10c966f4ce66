"""int8 through ONNX Runtime (torch.ao.quantization is deprecated in PyTorch 2.x).

Dynamic quantization (weights int8 ahead of time, activations scaled per batch at run time) for
MLPs, LSTMs and transformers, whose cost is in MatMul/Gemm; static quantization (activations
scaled from a calibration sample of training inputs, QDQ format, per-channel weights) for CNNs,
whose convolutions dynamic quantization would leave slow. The result is a variant run whose
package holds only `model.onnx`.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from modelfoundry.compress.variants import (
    copy_package_files,
    package_spec,
    parent_run_of,
    register_variant,
    variant_folder,
)
from modelfoundry.errors import UserError
from modelfoundry.models.registry import family_of
from modelfoundry.runfiles import CALIBRATION, HELDOUT, atomic_write_json, load_sample


def quantize_int8(run: str | Path, mode: str = "auto", console: Console | None = None) -> dict:
    """Write the int8 variant of a run; returns what was done (folder, version, sizes, agreement)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from modelfoundry.compress.onnx_export import export_onnx, heldout_inputs
    from modelfoundry.onnx_runtime import OnnxModel
    from modelfoundry.predictor import load

    console = console or Console(stderr=True)
    parent = parent_run_of(run)
    predictor = load(parent)
    if predictor.backend != "torch":
        raise UserError(f"{parent} is already an int8 (ONNX-only) variant; quantize the original run.")
    family = predictor.spec["model"]["name"]
    if mode not in ("auto", "dynamic", "static"):
        raise UserError(f"--mode {mode!r}: use auto, dynamic or static.")
    mode = family_of(family).int8 if mode == "auto" else mode
    calibration = _calibration_inputs(parent) if mode == "static" else None
    if not (predictor.path / "model.onnx").is_file():
        console.print("exporting to ONNX first...", highlight=False)
        export_onnx(parent)

    folder = variant_folder(parent, "int8")
    package = folder / "model"
    package.mkdir(parents=True)
    fp32_graph, package = (predictor.path / "model.onnx").resolve(), package.resolve()
    # ONNX Runtime's pre-processing leaves a <uuid>.data file of the model's size in the working folder
    # (90 MB for MiniLM): run it inside the scratch folder.
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        prepared = Path(scratch) / "prepared.onnx"
        _pre_process(quant_pre_process, fp32_graph, prepared)
        if mode == "dynamic":
            quantize_dynamic(
                str(prepared), str(package / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True
            )
        else:
            quantize_static(
                str(prepared),
                str(package / "model.onnx"),
                _Reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    inputs, source = heldout_inputs(parent, predictor.spec)
    task = predictor.task_module
    with torch.inference_mode():
        outputs = OnnxModel(package / "model.onnx")(inputs).float()
        reference, quantized = task.parity_view(predictor.model(inputs)), task.parity_view(outputs)
    agreement = task.agreement(reference, quantized)
    details = {
        "method": f"onnxruntime {mode} int8",
        "mode": mode,
        "bytes": (package / "model.onnx").stat().st_size,
        "fp32_bytes": (predictor.path / "model.onnx").stat().st_size,
        "calibration_examples": len(calibration) if calibration is not None else 0,
        "agreement": agreement,
        "max_abs_probability_difference": float((reference - quantized).abs().max()),
        "checked_on": f"{len(inputs)} {source} examples",
    }
    spec = package_spec(predictor.path, "int8", details, folder.name)
    atomic_write_json(package / "model.json", spec)
    copy_package_files(predictor.path, package)
    metrics = _heldout_metrics(quantized, parent, predictor.spec)
    version = register_variant(parent, folder, "int8", metrics)
    return {"folder": folder, "version": version, **details, "heldout": metrics}


def _pre_process(quant_pre_process, source: Path, target: Path) -> None:
    """ONNX Runtime's recommended shape inference + graph fusions before quantizing. Its symbolic shape
    inference gives up on some dynamic graphs (BERT's position slice, Min(512, tokens)); then the ONNX
    shape inference alone, and failing that the graph as exported."""
    import shutil

    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(source), str(target), skip_symbolic_shape=skip_symbolic)
            return
        except Exception:  # noqa: BLE001, S112  the pre-processing is an optimisation, never a reason to fail
            continue
    shutil.copyfile(source, target)


def _calibration_inputs(parent: Path) -> torch.Tensor:
    sample = load_sample(parent, CALIBRATION)
    if sample is None:
        raise UserError(
            f"{parent}: static quantization needs calibration data (a sample of training inputs in "
            f"{CALIBRATION}), and this run has none (trained before foundry kept one). Train the run "
            "again, or use --mode dynamic."
        )
    return sample["inputs"]


class _Reader:
    """Calibration batches for ONNX Runtime's CalibrationDataReader protocol."""

    def __init__(self, inputs: torch.Tensor, batch_size: int = 32):
        self.batches = iter(
            [{"input": inputs[i : i + batch_size].numpy()} for i in range(0, len(inputs), batch_size)]
        )

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def _heldout_metrics(outputs: torch.Tensor, parent: Path, spec: dict) -> dict | None:
    from modelfoundry.tasks import task_of

    sample = load_sample(parent, HELDOUT)
    if sample is None:
        return None
    task = task_of(spec)
    targets = sample["targets"].numpy()
    scores = task.variant_scores(task.predictions(outputs, spec), targets, spec, None)
    return {k: v for k, v in scores.items() if k in task.headline} | {"examples": len(targets)}
