"""Every shipped config loads, and its model builds for its data (STYLE habit 4)."""

from pathlib import Path

import pytest
import torch
import yaml

from modelfoundry.config import load_config
from modelfoundry.models.registry import build_model
from modelfoundry.starter import starter_config
from modelfoundry.tasks import TASKS

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    config, _ = load_config(path)
    if config.task == "text_classification":
        model = build_model(
            config.model.name,
            (config.data.max_length or 512,),
            2,
            {"vocab_size": 30522, "pad_id": 0},
            **config.model.model_extra,
        )
        assert model(torch.tensor([[101, 2204, 3185, 102]])).shape == (1, 2)
        return
    assert config.model.name in ("mlp", "cnn", "resnet")
    shape = (30,) if config.task.startswith("tabular_") else (1, 28, 28)
    build_model(config.model.name, shape, 10, **config.model.model_extra)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_init_starter_is_valid(task, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(starter_config(task))
    config, _ = load_config(path)
    assert config.task == task


def test_examples_are_shipped():
    assert {p.name for p in EXAMPLES} >= {
        "digits.yaml",
        "mnist.yaml",
        "breast_cancer.yaml",
        "reviews.yaml",
        "sst2.yaml",
    }


def test_init_says_the_step_budget_of_its_family():
    image = starter_config("image_classification")
    assert "about 300 steps" in image and "5 to 100 epochs" in image  # cnn: models/registry.py
    # the starter leaves the cnn's depth to the image size, as the recipe does (a written 2 would win)
    assert load_config(yaml.safe_load(image))[0].model.model_extra["depth"] == "auto"
    assert "about 1,000 steps" in starter_config("tabular_classification")
