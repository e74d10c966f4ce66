"""Run-time choices of a config that leaves them to foundry: epochs from the data size within a time
budget, and the validation loss as the monitor when the validation set is small."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from modelfoundry.builder import build, run_time_choices
from modelfoundry.config import load_config
from modelfoundry.data.prepare import prepare
from modelfoundry.errors import UserError

TABLE = {
    "task": "tabular_classification",
    "data": {"source": "builtin:breast_cancer"},
    "model": {"name": "mlp"},
}


def built(raw: dict, *overrides: str):
    cfg, base = load_config(raw, list(overrides))
    data = prepare(cfg, Path(base))
    return data, build(cfg, Path(base), data, torch.device("cpu"))


def test_unset_epochs_are_chosen_from_the_data_with_a_budget_and_early_stopping():
    data, result = built(TABLE)
    steps = -(-len(data.train) // result.train.batch_size)
    assert result.train.epochs == min(100, max(10, -(-1000 // steps)))
    assert result.train.max_minutes == 5 and result.train.early_stopping_patience == max(
        5, result.train.epochs // 10
    )
    assert any(choice.startswith(f"epochs {result.train.epochs}:") for choice in result.choices)


def test_an_image_model_from_scratch_gets_fewer_steps_than_a_table_model():
    digits = {"task": "image_classification", "data": {"source": "builtin:digits"}}
    data, cnn = built({**digits, "model": {"name": "cnn"}})
    steps = -(-len(data.train) // cnn.train.batch_size)
    assert cnn.train.epochs == max(5, -(-300 // steps)) < 1000 // steps  # models/registry.py: _IMAGE_STEPS
    assert any(f"about 300 steps (cnn) of {steps} per epoch" in choice for choice in cnn.choices)
    _, mlp = built({**digits, "model": {"name": "mlp"}})
    mlp_steps = -(-len(data.train) // mlp.train.batch_size)
    assert mlp.train.epochs == min(100, max(10, -(-1000 // mlp_steps)))  # other families' default budget
    _, own = built({**digits, "model": {"name": "cnn"}}, "train.epochs=4")
    assert own.train.epochs == 4  # the user's epochs win


def test_a_large_image_set_gets_the_image_floor_of_epochs_not_the_table_one():
    """MNIST-10k's 7,360 training images: 300 image steps are 3 epochs, raised to the family's floor: 5 for
    the cnn, 7 for the resnet (a table model's floor is 10)."""
    size = SimpleNamespace(train=range(7360), val=range(640))
    for family, floor in (("cnn", 5), ("resnet", 7), ("mlp", 10)):
        cfg, _ = load_config(
            {"task": "image_classification", "data": {"source": "builtin:digits"}, "model": {"name": family}}
        )
        train, choices = run_time_choices(cfg, size)
        assert train.epochs == floor, family
        assert any(choice.startswith(f"epochs {floor}: about") for choice in choices)


def test_set_epochs_win_and_a_small_validation_set_is_monitored_by_its_loss():
    data, result = built(TABLE, "train.epochs=7")
    assert len(data.val) < 200
    assert (result.train.epochs, result.train.max_minutes, result.train.early_stopping_patience) == (
        7,
        None,
        None,
    )
    assert result.train.monitor == "val_loss" and "fewer than 200" in result.choices[0]
    _, chosen = built(TABLE, "train.epochs=7", "train.monitor=val_f1_macro")
    assert chosen.train.monitor == "val_f1_macro" and chosen.choices == []  # the user's monitor wins


def test_a_recipe_with_its_own_epochs_is_not_given_a_budget():
    cfg, _ = load_config(
        {
            "task": "text_classification",
            "data": {"source": "x.csv", "text": "t", "label": "y"},
            "model": {"name": "pretrained"},
        }
    )
    assert cfg.train.epochs == 3 and cfg.recipe["train.epochs"] == "pretrained recipe"
    assert (cfg.train.lr, cfg.train.lr_head, cfg.train.schedule) == (5e-5, 1e-3, "linear")


def test_a_table_mlp_takes_one_hidden_layer_of_64_unless_the_config_says_otherwise():
    from modelfoundry.config import config_to_dict

    cfg, _ = load_config(TABLE)
    assert cfg.model.hidden == [64] and cfg.recipe["model.hidden"] == "mlp recipe for tabular_classification"
    again, _ = load_config(config_to_dict(cfg))  # a run's saved config: the key stays the recipe's
    assert not again.user_set("model.hidden")
    own, _ = load_config({**TABLE, "model": {"name": "mlp", "hidden": [32, 16]}})
    assert own.model.hidden == [32, 16] and "model.hidden" not in own.recipe
    images, _ = load_config({"task": "image_classification", "data": {"source": "builtin:digits"}})
    assert "model.hidden" not in images.recipe  # images keep the MLP's own (128, 64)


def grey_images(root: Path, side: int, per_class: int = 6) -> Path:
    """`root/<class>/<i>.png`: two classes of `side` x `side` grey images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("light", "dark")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(200 - 120 * k, 25, (side, side)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def stages(model) -> int:
    return 1 + sum(isinstance(layer, torch.nn.MaxPool2d) for layer in model.modules())


def test_the_cnn_takes_its_depth_from_the_image_size_unless_the_config_sets_it(tmp_path):
    """The cnn recipe's depth "auto": 2 stages for 8x8 digits, 3 for 28x28 images (MNIST's size), said
    in a `chosen` line and kept in the package's options; a depth the config sets wins."""
    digits = {"task": "image_classification", "data": {"source": "builtin:digits"}}
    _, small = built(digits)
    assert stages(small.model) == 2 and small.model.resolved_options == {"depth": 2}
    assert any(choice.startswith("cnn depth 2: for 8x8 images") for choice in small.choices)
    folder = grey_images(tmp_path / "pictures", 28)
    mnist_size = {"task": "image_classification", "data": {"source": str(folder)}}
    _, large = built(mnist_size)
    assert stages(large.model) == 3 and large.model.resolved_options == {"depth": 3}
    assert any(choice.startswith("cnn depth 3: for 28x28 images") for choice in large.choices)
    _, own = built(mnist_size, "model.depth=2")
    assert stages(own.model) == 2 and not any(choice.startswith("cnn depth") for choice in own.choices)
    with pytest.raises(
        UserError, match="model.depth: 'deep' must be a positive whole number or one of 'auto'"
    ):
        load_config(mnist_size, ["model.name=cnn", "model.depth=deep"])


def test_a_cnn_too_deep_or_too_wide_to_build_is_refused_with_the_key_and_the_fix():
    """Each stage doubles the channels: depth 30 asked for 32 x 2^29 of them and the run was killed for
    memory before it could say why. Now it is a UserError naming the key, the value and what fits."""
    from modelfoundry.models.cnn import build_cnn

    assert sum(isinstance(m, torch.nn.Conv2d) for m in build_cnn((1, 28, 28), 10, depth=8).modules()) == 16
    with pytest.raises(UserError, match=r"model.depth: 30 stages .* Use model.depth 8 or less"):
        build_cnn((1, 28, 28), 10, depth=30)
    with pytest.raises(UserError, match=r"model.width: 5000 channels in the first stage; at most 4,096"):
        build_cnn((1, 28, 28), 10, width=5000, depth=1)
