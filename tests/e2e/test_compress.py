"""`foundry compress`: int8, pruned and distilled variants of a trained run, each a registered
version that loads and serves, and the trade-off report comparing them."""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import pytest

import modelfoundry as mf
from e2e_helpers import Server, assert_ok, assert_user_error, foundry, write_config, write_image_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A small CNN on 8x8 images, trained in a registry of its own (compress writes beside it)."""
    work = tmp_path_factory.mktemp("compress")
    write_image_folder(work / "images", per_class=30)
    config = write_config(
        work / "cnn.yaml",
        "image_classification",
        "images",
        model={"name": "cnn", "width": 8},
        train={"epochs": 3, "precision": "fp32"},
    )
    home = work / "runs"
    assert_ok(foundry("train", config, "--run-dir", home / "cnn", cwd=work, home=home))
    return work, home, home / "cnn"


def test_all_variants_are_registered_loadable_servable_and_compared(cnn_run):
    work, home, run = cnn_run
    result = foundry("compress", run, "--all", "--finetune-epochs", "1", "--epochs", "2", cwd=work, home=home)
    assert_ok(result)
    for kind in ("int8 (static)", "pruned:", "distilled:"):
        assert kind in result.stdout, result.stdout
    variants = {p.name.removeprefix("cnn-"): p for p in home.glob("cnn-*")}
    assert set(variants) == {"int8", "pruned50", "distilled"}

    int8 = json.loads((variants["int8"] / "model" / "model.json").read_text())["variant"]
    assert int8["mode"] == "static" and int8["calibration_examples"] > 0
    assert sorted(p.name for p in (variants["int8"] / "model").iterdir()) == ["model.json", "model.onnx"]
    pruned = json.loads((variants["pruned50"] / "model" / "model.json").read_text())["variant"]
    assert pruned["parameters_after"] < 0.6 * pruned["parameters_before"]

    images = sorted((work / "images").rglob("*.png"))[:4]
    for (
        folder
    ) in variants.values():  # each loads with plain mf.load: int8 in ONNX Runtime, the others in torch
        assert len(mf.load(folder).predict(images)) == 4
    assert mf.load(variants["int8"]).backend == "onnx"

    listed = foundry("models", "list", cwd=work, home=home)
    assert_ok(listed)
    for kind in ("int8", "pruned", "distilled"):
        assert kind in listed.stdout

    report = json.loads((run / "compression.json").read_text())
    assert [r["model"] for r in report["rows"]] == [
        "original",
        "original, ONNX fp32",
        "distilled",
        "int8",
        "pruned50",
    ]
    original = report["rows"][0]
    for row in report["rows"]:
        assert row["accuracy"] >= 0 and row["batch1_p50_ms"] > 0 and row["throughput_per_s"] > 0
        assert 0 <= row["agreement"] <= 1
    assert original["agreement"] == 1 and any(r["pareto"] for r in report["rows"])
    html = (run / "compression.html").read_text()
    assert "Pareto" in html and "<img" in html

    with Server(variants["int8"].name, "--backend", "onnx", cwd=work, home=home) as server:
        card = httpx.get(f"{server.url}/v1/model").json()
        answer = httpx.post(
            f"{server.url}/v1/predict", json={"inputs": [base64.b64encode(images[0].read_bytes()).decode()]}
        ).json()
    assert card["variant"] == "int8" and card["backend"] == "onnx" and card["version"].startswith("v")
    assert answer["predictions"][0]["label"] in ("cat", "dog")


def test_pruning_ratio_outside_zero_one(cnn_run):
    work, home, run = cnn_run
    for ratio in ("0", "1", "1.5", "-0.2"):
        assert_user_error(
            foundry("compress", run, "--prune", ratio, cwd=work, home=home),
            f"--prune {float(ratio)}",
            "between 0 and 1",
        )


def test_student_that_does_not_fit_the_task(cnn_run):
    work, home, run = cnn_run
    assert_user_error(
        foundry(
            "compress", run, "--distill", "--student", "model.name=lstm", "--no-report", cwd=work, home=home
        ),
        "model.name: 'lstm' is not a model for this data",
    )
    assert_user_error(
        foundry(
            "compress", run, "--distill", "--student", "model.width=4", "--no-report", cwd=work, home=home
        ),
        "--student: name the student's family",
    )


def test_static_quantization_without_calibration_data(cnn_run, tmp_path):
    work, home, run = cnn_run
    copy = shutil.copytree(run, home / "no-calibration")
    (copy / "calibration.safetensors").unlink()
    assert_user_error(
        foundry(
            "compress", copy, "--quantize", "int8", "--mode", "static", "--no-report", cwd=work, home=home
        ),
        "static quantization needs calibration data",
        "--mode dynamic",
    )


def test_int8_variant_refuses_the_torch_backend(cnn_run):
    work, home, run = cnn_run
    copy = shutil.copytree(run, home / "int8-check")  # its variants are int8-check-*, apart from cnn-*
    assert_ok(
        foundry(
            "compress", copy, "--quantize", "int8", "--mode", "dynamic", "--no-report", cwd=work, home=home
        )
    )
    with pytest.raises(mf.UserError, match="has only model.onnx"):
        mf.load(home / "int8-check-int8", backend="torch")
    assert mf.load(home / "int8-check-int8").backend == "onnx"
    image = min((work / "images").rglob("*.png"))
    assert_user_error(  # no gradients in an int8 graph: the message sends the user to the original run
        foundry("explain", home / "int8-check-int8", image, cwd=work, home=home),
        "holds only an ONNX graph",
        "explain the original run",
    )
