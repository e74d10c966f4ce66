"""`foundry export RUN --format onnx`: a self-contained model.onnx that ONNX Runtime runs with the
same probabilities as PyTorch, loadable with `mf.load(run, backend="onnx")`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import modelfoundry as mf
from e2e_helpers import Server, assert_ok, assert_user_error, foundry, one_line
from modelfoundry.compress.onnx_export import _export, export_onnx, max_probability_difference
from modelfoundry.errors import UserError
from modelfoundry.onnx_runtime import OnnxModel

pytestmark = pytest.mark.slow


@pytest.fixture
def image_copy(image_run, tmp_path):
    """A private copy of the shared image run: exporting writes into the run folder."""
    return shutil.copytree(image_run.path, tmp_path / "image-run")


def test_export_writes_one_onnx_file_that_predicts_like_pytorch(image_copy, image_run, tmp_path):
    result = foundry("export", image_copy, "--format", "onnx", cwd=tmp_path, home=image_run.home)
    assert_ok(result)
    message = one_line(result.stdout)
    assert "parity: max probability difference" in message and "held-out examples" in message
    assert "torchvision" not in result.stderr  # the exporter's chatter about absent libraries stays quiet
    files = sorted(p.name for p in (image_copy / "model").iterdir())
    assert files == [
        "model.json",
        "model.onnx",
        "model.safetensors",
    ]  # weights inside model.onnx, no side file
    record = json.loads((image_copy / "model" / "model.json").read_text())["onnx"]
    assert (
        record["parity"]["max_abs_probability_difference"] <= 1e-4
        and record["parity"]["inputs"] == "held-out"
    )
    images = sorted(image_run.data.rglob("*.png"))[:6]
    images = [p for p in images if p.name != "broken.png"]
    torch_p = mf.load(image_copy).predict_proba(images)
    onnx_p = mf.load(image_copy, backend="onnx").predict_proba(images)
    assert np.abs(torch_p - onnx_p).max() < 1e-4

    import base64

    import httpx

    with Server(
        image_copy, "--backend", "onnx", cwd=tmp_path, home=image_run.home
    ) as server:  # not in the registry
        card = httpx.get(f"{server.url}/v1/model").json()
        answer = httpx.post(
            f"{server.url}/v1/predict",
            json={"inputs": [base64.b64encode(p.read_bytes()).decode() for p in images], "top_k": 2},
        ).json()
    assert card["backend"] == "onnx" and card["version"] is None
    served = np.array(
        [
            [t["probability"] for t in sorted(p["top_k"], key=lambda t: t["label"])]
            for p in answer["predictions"]
        ]
    )
    assert np.abs(served - torch_p).max() < 1e-4  # labels sort as the model's: cat, dog


def test_export_refuses_a_graph_that_disagrees_and_writes_nothing(image_copy):
    with pytest.raises(
        UserError,
        match=r"differ from PyTorch's by up to .* more than the -1 allowed; "
        r"model.onnx was not written",
    ):
        export_onnx(image_copy, tolerance=-1.0)
    assert not list((image_copy / "model").glob("*.onnx*"))


def test_export_of_a_run_without_a_package(tmp_path):
    (tmp_path / "half-run").mkdir()
    assert_user_error(
        foundry("export", tmp_path / "half-run", cwd=tmp_path, home=tmp_path / "runs"),
        "no model package here",
        "foundry runs list",
    )


def test_onnx_backend_before_export_says_how_to_export(image_copy):
    with pytest.raises(UserError, match="no model.onnx yet. Export it with `foundry export"):
        mf.load(image_copy, backend="onnx")


def test_table_model_exports_and_predicts_rows(table_run, tmp_path):
    run = shutil.copytree(table_run.path, tmp_path / "table-run")
    assert_ok(foundry("export", run, cwd=tmp_path, home=table_run.home))
    rows = table_run.data
    assert mf.load(run, backend="onnx").predict(rows) == mf.load(run).predict(rows)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_text_models_from_scratch_export_with_dynamic_batch_and_length(name, tmp_path):
    """LSTMs with packed sequences need the TorchScript exporter; the graph must take any (B, T)."""
    from modelfoundry.models.registry import build_model

    torch.manual_seed(0)
    options = {"embed_dim": 8, "hidden": 8} if name == "lstm" else {"width": 8, "depth": 1, "heads": 2}
    model = build_model(name, (32,), 3, {"vocab_size": 100, "pad_id": 0}, **options).eval()
    exporter = _export(model, torch.tensor([[1, 5, 7, 2], [1, 9, 2, 0]]), tmp_path / "m.onnx", text=True)
    assert exporter == ("torchscript" if name == "lstm" else "torch.export")
    longer = torch.tensor([[1, 5, 6, 7, 8, 9, 2], [1, 3, 2, 0, 0, 0, 0], [1, 4, 4, 4, 2, 0, 0]])
    assert max_probability_difference(model, OnnxModel(tmp_path / "m.onnx"), longer) < 1e-5
