"""The CUDA path: skipped without a GPU (CI has none); run on a GPU machine with
`python -m pytest tests/gpu -q`."""

import numpy as np
import pytest
import torch

import modelfoundry as mf
from modelfoundry.training.optim import resolve_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_precision_uses_half_on_cuda():
    assert resolve_precision("auto", torch.device("cuda")) in (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("precision", ["auto", "fp16", "fp32"])
def test_digits_trains_on_cuda_with_augmentation(tmp_path, monkeypatch, precision):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    run = mf.train(
        "examples/digits.yaml",
        overrides=[
            "train.epochs=8",
            f"train.precision={precision}",
            "train.device=cuda",
            "data.augment.flip=true",
        ],
    )
    assert run.metrics["test"]["accuracy"] > 0.9
    assert run.metrics["precision"] == {"auto": "bfloat16", "fp16": "float16", "fp32": "fp32"}[precision]
    cpu, gpu = mf.load(run.path), mf.load(run.path, device="cuda")
    images = [np.random.default_rng(0).random((8, 8), dtype=np.float32) for _ in range(5)]
    np.testing.assert_allclose(cpu.predict_proba(images), gpu.predict_proba(images), atol=1e-4)
