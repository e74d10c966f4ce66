"""Transfer learning on images: `pretrained` means the ImageNet backbone for image tasks, fastai-style
fine-tuning (frozen backbone first, discriminative learning rates), and the config's bad values."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from modelfoundry.builder import warm_start
from modelfoundry.config import TrainConfig, load_config
from modelfoundry.data.prepare import ArrayData
from modelfoundry.errors import UserError
from modelfoundry.models.registry import build_model
from modelfoundry.predictor import save_package
from modelfoundry.training.features import cached_features
from modelfoundry.training.loop import fit
from modelfoundry.training.optim import build_optimizer

IMAGES = {"task": "image_classification", "data": {"source": "builtin:digits"}}


def config(model: dict, train: dict | None = None, task: dict = IMAGES):
    return load_config({**task, "model": model, "train": train or {}})[0]


def test_pretrained_means_the_imagenet_backbone_for_images_with_its_recipe():
    cfg = config({"name": "pretrained", "backbone": "efficientnet_lite0"})
    assert cfg.model.name == "pretrained_image"
    assert (cfg.train.freeze_epochs, cfg.train.lr_backbone, cfg.train.epochs) == (1, 0.0002, 3)
    assert cfg.recipe["train.freeze_epochs"] == "pretrained_image recipe"
    text = {"task": "text_classification", "data": {"source": "x.csv", "label": "y", "text": "t"}}
    assert config({"name": "pretrained"}, task=text).model.name == "pretrained"


def test_options_of_the_other_pretrained_family_are_named_as_errors():
    with pytest.raises(UserError, match="model.pooling: not an option of 'pretrained_image'.*backbone"):
        config({"name": "pretrained", "pooling": "cls"})
    with pytest.raises(UserError, match="model.backbone: 'resnet50' must be"):
        config({"name": "pretrained", "backbone": "resnet50"})


def test_freeze_epochs_must_leave_epochs_to_fine_tune():
    with pytest.raises(UserError, match="train.freeze_epochs: 3 is not below train.epochs \\(3\\)"):
        config({"name": "pretrained"}, {"freeze_epochs": 3})


def tiny_images(n: int = 16, seed: int = 0) -> ArrayData:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 2
    images = torch.rand(n, 1, 8, 8, generator=generator) * 0.3 + targets[:, None, None, None] * 0.6
    return ArrayData(images, targets)


def test_frozen_epochs_keep_the_backbone_and_its_batchnorm_statistics_then_fine_tune_it():
    model = build_model("pretrained_image", (1, 8, 8), 2, image_size=32)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    unchanged = []  # per epoch: the backbone's weights and running statistics as they were

    def after_epoch(record):
        state = model.backbone.state_dict()
        unchanged.append(all(torch.equal(before[k], state[k]) for k in before))

    cfg = TrainConfig(epochs=3, freeze_epochs=2, batch_size=8, lr=0.01, precision="fp32", device="cpu")
    fit(
        model,
        tiny_images(),
        None,
        cfg,
        device=torch.device("cpu"),
        console=Console(quiet=True),
        on_epoch=after_epoch,
    )
    assert unchanged == [True, True, False]


def test_lr_backbone_gives_the_backbone_its_own_learning_rate():
    model = build_model("pretrained_image", (3, 8, 8), 2, image_size=32, pretrained_weights=False)
    optimizer = build_optimizer(model, TrainConfig(lr=0.01, lr_backbone=0.001))
    backbone = {id(p) for p in model.backbone.parameters()}
    rates = {
        ("backbone" if id(p) in backbone else "head", group["lr"])
        for group in optimizer.param_groups
        for p in group["params"]
    }
    assert rates == {("backbone", 0.001), ("head", 0.01)}
    with pytest.raises(UserError, match="train.lr_backbone: Sequential has no pretrained backbone"):
        build_optimizer(build_model("cnn", (1, 8, 8), 2), TrainConfig(lr_backbone=0.001))


def test_features_only_trains_the_models_own_head_on_features_computed_once():
    model = build_model("pretrained_image", (1, 8, 8), 2, image_size=32)
    head, cached = cached_features(model, {"train": tiny_images(), "val": None})
    assert cached["train"].inputs.shape == (16, 1280) and "val" not in cached
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, precision="fp32", device="cpu")
    fit(head, cached["train"], None, cfg, device=torch.device("cpu"), console=Console(quiet=True))
    model.eval()
    with torch.inference_mode():
        assert torch.allclose(model(tiny_images().inputs), head(cached["train"].inputs), atol=1e-5)


def package(folder, name: str, labels: list[str], **options):
    """A model package as a run leaves it, of family `name` on 8x8 grey digits."""
    model = build_model(name, (1, 8, 8), len(labels), **options)
    spec = {"task": "image_classification", "model": {"name": name, "options": options}, "labels": labels}
    save_package(folder, model, {**spec, "run_id": folder.name, "input_shape": [1, 8, 8]})
    return model


def test_init_from_copies_an_earlier_runs_weights_and_a_changed_label_set_gets_a_new_head(tmp_path):
    earlier = package(tmp_path / "earlier", "cnn", ["0", "1"], width=4)
    cfg = config({"name": "cnn", "width": 4, "init_from": str(tmp_path / "earlier")})
    same = build_model("cnn", (1, 8, 8), 2, width=4)
    assert "init_from earlier: 26 tensors" in warm_start(same, cfg, tmp_path, ["0", "1"])
    assert all(torch.equal(a, b) for a, b in zip(earlier.state_dict().values(), same.state_dict().values()))
    more = build_model("cnn", (1, 8, 8), 3, width=4)
    line = warm_start(more, cfg, tmp_path, ["0", "1", "2"])
    assert "its labels ['0', '1'] are not this data's ['0', '1', '2']: a new head `16` (3 outputs)" in line
    assert torch.equal(more[0].weight, earlier[0].weight)


def test_init_from_a_run_of_another_family_or_architecture_is_one_message(tmp_path):
    package(tmp_path / "cnn-run", "cnn", ["0", "1"], width=4)
    cfg = config({"name": "mlp", "hidden": [8], "init_from": str(tmp_path / "cnn-run")})
    with pytest.raises(
        UserError, match="holds a 'cnn' model for image_classification; this config trains a 'mlp'"
    ):
        warm_start(build_model("mlp", (1, 8, 8), 2, hidden=[8]), cfg, tmp_path, ["0", "1"])
    wider = config({"name": "cnn", "width": 8, "init_from": str(tmp_path / "cnn-run")})
    with pytest.raises(UserError, match="another architecture.*the options of that run \\({'width': 4}\\)"):
        warm_start(build_model("cnn", (1, 8, 8), 2, width=8), wider, tmp_path, ["0", "1"])


def test_pruning_a_pretrained_image_model_is_refused_with_the_families_that_can_be():
    from modelfoundry.compress.prune import prune

    model = build_model("pretrained_image", (1, 8, 8), 2, image_size=32, pretrained_weights=False)
    with pytest.raises(UserError, match="'pretrained_image' can't be pruned. Prunable families: mlp"):
        prune(model, "pretrained_image", {}, 0.5, input_shape=(1, 8, 8), num_classes=2, text=None)
