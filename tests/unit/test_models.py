"""Model families: each builds from the registry for tiny inputs, and bad names / options are UserErrors."""

from __future__ import annotations

import pytest
import torch

from modelfoundry.errors import UserError
from modelfoundry.models.registry import FAMILIES, TEXT_ONLY, build_model, model_options

TINY = {
    "mlp": {"hidden": [8]},
    "cnn": {"width": 4, "depth": 2},
    "resnet": {"width": 4, "depth": 2, "blocks_per_stage": 1},
    "pretrained_image": {"image_size": 32},
}
TINY_TEXT = {
    "lstm": {"embed_dim": 8, "hidden": 8},
    "gru": {"embed_dim": 8, "hidden": 8},
    "transformer": {"width": 8, "depth": 1, "heads": 2},
    "pretrained": {},
}
TINY_TABLE = {
    "gbdt": {"n_estimators": 5},
    "linear": {},
}  # trained by their own fit: tests/e2e, unit/test_linear.py
TINY_GENERATIVE = {
    "gpt": {"n_layer": 1, "n_embd": 8, "n_head": 2},  # tests/unit/test_generation.py
    "pretrained_lm": {},  # a tiny Llama folder as model.path: tests/unit/test_llm.py
}
TOKENIZER = {"vocab_size": 30522, "pad_id": 0}
# recommendation: input_shape (users, user side features, item side features), num_classes the items
TINY_RANKING = {"mf": {"dim": 4}, "two_tower": {"dim": 4, "hidden": 8}, "popularity": {}}


def test_every_family_has_tiny_options_here():
    assert set(TINY) | set(TINY_TEXT) | set(TINY_TABLE) | set(TINY_GENERATIVE) | set(TINY_RANKING) == set(
        FAMILIES
    )
    assert set(TINY_TEXT) == TEXT_ONLY


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_every_text_family_builds_from_the_registry(name, tiny_bert):
    options = {"path": str(tiny_bert)} if name == "pretrained" else TINY_TEXT[name]
    model = build_model(name, (16,), 3, TOKENIZER, **options)
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2204, 102, 0]])
    assert model(ids).shape == (2, 3)
    assert model.head.out_features == 3  # the layer lr_head applies to


@pytest.mark.parametrize("name", sorted(TEXT_ONLY))
def test_text_families_reject_images_and_image_families_reject_text(name):
    with pytest.raises(UserError, match=f"'{name}' is not a model for this data.*cnn, resnet or mlp"):
        build_model(name, (1, 8, 8), 3)
    with pytest.raises(UserError, match="'cnn' is not a model for this data. Text takes one of gru, lstm"):
        build_model("cnn", (16,), 3, TOKENIZER)


def test_a_generative_family_classifies_nothing():
    with pytest.raises(UserError, match="'gpt' generates text .* classify text with one of gru, lstm"):
        build_model("gpt", (16,), 3, TOKENIZER, **TINY_GENERATIVE["gpt"])
    model = build_model("gpt", (16,), 0, TOKENIZER, **TINY_GENERATIVE["gpt"])
    assert model(torch.tensor([[101, 2023]])).shape == (1, 2, TOKENIZER["vocab_size"])


def test_text_options_exclude_what_the_tokenizer_decides():
    assert "vocab_size" not in model_options("lstm") and "pad_id" not in model_options("pretrained")
    assert model_options("pretrained")["freeze_layers"] == 0


def test_pretrained_freezing_keeps_embeddings_and_first_layers_fixed(tiny_bert):
    model = build_model("pretrained", (16,), 2, TOKENIZER, path=str(tiny_bert), freeze_layers=1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("encoder.embeddings.") for n in frozen)
    assert any(".layer.0." in n for n in frozen) and not any(".layer.1." in n for n in frozen)
    embeddings_only = build_model(
        "pretrained", (16,), 2, TOKENIZER, path=str(tiny_bert), freeze_embeddings=True
    )
    assert {n for n, p in embeddings_only.named_parameters() if not p.requires_grad} == {
        n for n in frozen if n.startswith("encoder.embeddings.")
    }
    probe = build_model("pretrained", (16,), 2, TOKENIZER, path=str(tiny_bert), freeze_encoder=True)
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_pretrained_bad_freeze_and_pooling_are_user_errors(tiny_bert):
    with pytest.raises(UserError, match="freeze_layers 5 is outside 0..2"):
        build_model("pretrained", (16,), 2, TOKENIZER, path=str(tiny_bert), freeze_layers=5)
    with pytest.raises(UserError, match="pooling 'max' is not one of mean, cls"):
        build_model("pretrained", (16,), 2, TOKENIZER, path=str(tiny_bert), pooling="max")


def test_pretrained_path_that_is_not_a_hugging_face_folder_names_the_missing_file(tiny_bert, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_bert, tmp_path / "model")
    (folder / "model.safetensors").unlink()
    with pytest.raises(
        UserError,
        match=r"not a Hugging Face model folder: model.safetensors or pytorch_model.bin "
        r"missing",
    ):
        build_model("pretrained", (16,), 2, TOKENIZER, path=str(folder))
    with pytest.raises(UserError, match="is not a folder"):
        build_model("pretrained", (16,), 2, TOKENIZER, path=str(tmp_path / "nope"))


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 12, 12)])
def test_every_family_gives_one_logit_per_class(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 5, **TINY[name])
    logits = model(torch.rand(3, *shape))
    assert logits.shape == (3, 5)
    logits.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters())


def test_mlp_takes_tables():
    model = build_model("mlp", (7,), 3, hidden=[8, 4])
    assert model(torch.randn(4, 7)).shape == (4, 3)


def test_gbdt_takes_tables_only_and_says_what_images_take():
    with pytest.raises(UserError, match="'gbdt' takes tables .* Use cnn, resnet or mlp for images"):
        build_model("gbdt", (1, 8, 8), 3, **TINY_TABLE["gbdt"])


def test_mlp_without_batch_norm_has_no_norm_layers():
    model = build_model("mlp", (7,), 3, hidden=[8], batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_image_families_reject_tables(name):
    with pytest.raises(UserError, match=rf"'{name}' needs images.*model.name: mlp"):
        build_model(name, (7,), 3)


@pytest.mark.parametrize("size", [8, 28])
def test_resnet_on_small_and_mnist_sized_images(size):
    model = build_model("resnet", (1, size, size), 10, width=4, depth=3, blocks_per_stage=1)
    assert model(torch.rand(2, 1, size, size)).shape == (2, 10)


def test_resnet_on_tiny_images_stops_downsampling():
    model = build_model("resnet", (1, 2, 2), 4, width=4, depth=3, blocks_per_stage=1)
    assert model(torch.rand(2, 1, 2, 2)).shape == (2, 4)


def test_unknown_model_suggests_the_nearest():
    with pytest.raises(
        UserError, match="unknown model 'resnt'. Did you mean 'resnet'.*Available: mlp, cnn, resnet"
    ):
        build_model("resnt", (1, 8, 8), 10)


def test_unknown_option_suggests_the_nearest_and_lists_options():
    with pytest.raises(UserError) as info:
        build_model("cnn", (1, 8, 8), 10, widht=4)
    message = str(info.value)
    assert "model.widht: not an option of 'cnn'. Did you mean 'width'?" in message
    assert "depth (default 2)" in message


def test_options_of_a_family_are_its_keyword_defaults():
    assert model_options("cnn") == {"width": 32, "depth": 2, "dropout": 0.2}


@pytest.mark.parametrize("options", [{"dropout": 2.0}, {"hidden": "x"}])
def test_options_that_do_not_build_are_user_errors(options):
    with pytest.raises(UserError, match=r"model\.(dropout|hidden)"):
        build_model("mlp", (4,), 2, **options)


def test_negative_layer_width_is_a_user_error():
    with pytest.raises(UserError, match=r"model\.(dropout|hidden)"):
        build_model("mlp", (4,), 2, hidden=[-3])


@pytest.mark.parametrize("value", [True, -1, 1.5])
def test_freeze_layers_must_be_a_whole_number_of_layers(value, tiny_bert):
    with pytest.raises(
        UserError, match=r"model.freeze_layers: .* must be a whole number of layers, 0 or more"
    ):
        build_model("pretrained", (16,), 2, TOKENIZER, path=str(tiny_bert), freeze_layers=value)


def test_damaged_model_folder_is_a_user_error(tiny_bert, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_bert, tmp_path / "model")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="the weights in .* could not be loaded"):
        build_model("pretrained", (16,), 2, TOKENIZER, path=str(folder))


def test_lr_head_on_a_model_without_a_head_is_refused():
    from modelfoundry.config import TrainConfig
    from modelfoundry.training.optim import build_optimizer

    with pytest.raises(
        UserError, match="train.lr_head: .* has no separate classification head.*Remove train.lr_head"
    ):
        build_optimizer(build_model("mlp", (4,), 2, hidden=[8]), TrainConfig(lr_head=0.01))
    text_model = build_model("lstm", (16,), 2, TOKENIZER, embed_dim=4, hidden=4)
    groups = build_optimizer(text_model, TrainConfig(lr=1e-3, lr_head=0.01)).param_groups
    head = {id(p) for p in text_model.head.parameters()}
    assert {g["lr"] for g in groups if all(id(p) in head for p in g["params"])} == {0.01}
    assert {g["lr"] for g in groups if not any(id(p) in head for p in g["params"])} == {1e-3}


@pytest.mark.parametrize("name", sorted(TINY_RANKING))
def test_every_ranking_family_scores_every_item_for_a_user_and_pairs_in_training(name):
    model = build_model(name, (6, 2, 3), 9, **TINY_RANKING[name]).eval()
    users = torch.tensor([[0], [5]])
    assert model(users).shape == (2, 9)  # every item's score, for full ranking
    pairs = torch.tensor([[0, 1], [2, 3], [4, 5]])
    model.train()
    expected = {"mf": (3, 2), "two_tower": (3, 3), "popularity": (3, 1)}[name]  # BPR / in-batch / counts
    assert model(pairs).shape == expected
