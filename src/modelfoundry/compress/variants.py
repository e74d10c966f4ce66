"""A compressed variant is a run of its own: `runs/<parent-id>-<kind>/` with a `model/` package,
the parent's held-out and calibration samples and config, registered as a run and as a model
version whose parent is the original's version. So every command that takes a run (predict,
evaluate, export, serve, models alias) takes a variant too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from modelfoundry.errors import UserError
from modelfoundry.runfiles import CALIBRATION, CONFIG, HELDOUT, package_folder, run_folder, runs_root
from modelfoundry.store.registry import Registry
from modelfoundry.tasks import task_of

SHARED_FILES = (HELDOUT, CALIBRATION, CONFIG)


def variant_folder(parent: Path, kind: str) -> Path:
    """`runs/<parent-id>-<kind>`, numbered when that exists already (an earlier variant stays as it was)."""
    base = runs_root() / f"{parent.name}-{kind}"
    folder, n = base, 2
    while folder.exists():
        folder, n = base.with_name(f"{base.name}-{n}"), n + 1
    return folder


def package_spec(parent_package: Path, kind: str, details: dict, run_id: str) -> dict:
    spec = json.loads((parent_package / "model.json").read_text())
    spec.pop("onnx", None)  # the parent's export record describes the parent's graph
    spec["variant"] = {"kind": kind, "of_run": spec.get("run_id"), **details}
    spec["run_id"] = run_id
    return spec


def copy_package_files(parent_package: Path, package: Path) -> None:
    """Tokenizer, encoder config and other non-weight files the package needs besides its weights."""
    for item in parent_package.rglob("*"):
        relative = item.relative_to(parent_package)
        if (
            item.is_file()
            and relative.name not in ("model.json", "model.safetensors", "model.onnx")
            and not relative.name.startswith(".")
        ):
            (package / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, package / relative)


def register_variant(parent_run: Path, folder: Path, kind: str, metrics: dict | None) -> str | None:
    """Record the variant as a finished run and as a model version from the parent's version; returns 'vN'."""
    from modelfoundry.store.models import ModelStore

    for name in SHARED_FILES:
        if (parent_run / name).is_file() and not (folder / name).exists():
            shutil.copyfile(parent_run / name, folder / name)
    spec = json.loads((folder / "model" / "model.json").read_text())
    store = ModelStore()
    try:
        parent_version = store.get(str(parent_run)).id
    except UserError:
        parent_version = None  # a package outside the registry: the variant starts its own lineage
    registry = Registry()
    config = json.loads(json.dumps(spec.get("variant", {})))
    registry.start(
        folder.name,
        f"{parent_run.name} {kind}",
        spec["task"],
        f"{spec['model']['name']}-{kind}",
        folder,
        {"variant": config},
    )
    headline = {f"test_{k}": v for k, v in (metrics or {}).items() if k in task_of(spec).headline}
    registry.finish(folder.name, "completed", metrics=headline)
    version = store.register(
        folder.name,
        folder / "model",
        spec["task"],
        spec["labels"],
        headline,
        variant=kind,
        parent=parent_version,
    )
    return version.name


def parent_run_of(run: str | Path) -> Path:
    from modelfoundry.store.registry import resolve_run

    return run_folder(package_folder(resolve_run(str(run))))


def refuse_generator(parent: Path) -> None:
    """`foundry compress` makes variants scored like classifiers and regressors; a text generation model's
    ONNX graph (with pasts) and its int8 copy come from `foundry export` and compress/gpt_onnx.py."""
    folder = package_folder(parent)
    spec = json.loads((folder / "model.json").read_text())
    package = task_of(spec).predictor(None, spec, folder)  # what load() returns, without the weights
    if callable(getattr(package, "generate", None)):  # asks the package, as the server does
        raise UserError(
            f"compress: {parent.name} is a text generation model, which compress does not make variants of "
            "yet. `foundry export RUN --format onnx` writes its ONNX decoder graph (parity-checked); "
            "modelfoundry.compress.gpt_onnx.quantize_int8(graph, target) makes the int8 copy "
            "(bench/serve_generate.py measures both)."
        )
