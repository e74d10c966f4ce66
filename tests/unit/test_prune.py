"""Structured pruning: the model really shrinks, rebuilds from its new options through the package
loader, and keeps the units that matter (a unit whose weights are zero is the one removed)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from modelfoundry.compress.prune import parameter_count, prune
from modelfoundry.errors import UserError
from modelfoundry.models.registry import build_model
from modelfoundry.predictor import load, save_package

CLASSES, TEXT = 3, {"vocab_size": 40, "pad_id": 0}
# name -> (input_shape, text, options): tiny versions of every prunable family.
FAMILIES = {
    "mlp": ((20,), None, {"hidden": [16, 16]}),
    "cnn": ((3, 8, 8), None, {"width": 8, "depth": 2}),
    "resnet": ((3, 8, 8), None, {"width": 4, "depth": 2, "blocks_per_stage": 2}),
    "lstm": ((12,), TEXT, {"embed_dim": 6, "hidden": 8, "layers": 2, "pooling": "mean"}),
    "gru": (
        (12,),
        TEXT,
        {"embed_dim": 6, "hidden": 8, "layers": 2, "bidirectional": False, "pooling": "last"},
    ),
    "transformer": ((12,), TEXT, {"width": 8, "depth": 2, "heads": 2, "ffn_multiplier": 2}),
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, **options) -> torch.nn.Module:
    """A family's tiny model in eval mode, with random BatchNorm statistics so that copying them matters."""
    input_shape, text, defaults = FAMILIES[name]
    model = build_model(name, input_shape, CLASSES, text, **{**defaults, **options}).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    return model


def inputs(input_shape: tuple[int, ...], text: dict | None) -> torch.Tensor:
    if text is None:
        return torch.randn(4, *input_shape)
    ids = torch.randint(1, text["vocab_size"], (4, *input_shape))
    ids[1, 5:] = text["pad_id"]  # one shorter text
    return ids


def reload(folder, model: torch.nn.Module, name: str, options: dict, input_shape, text) -> torch.nn.Module:
    """Save a package as training does and load it back through `modelfoundry.predictor.load`."""
    preprocessing = {"kind": "text", **text} if text else {"kind": "image"}
    spec = {
        "task": "text_classification" if text else "image_classification",
        "model": {"name": name, "options": options},
        "input_shape": list(input_shape),
        "labels": [str(i) for i in range(CLASSES)],
        "preprocessing": preprocessing,
    }
    files = model.package_files() if hasattr(model, "package_files") else {}
    save_package(folder / "model", model, spec, files)
    return load(folder / "model").model


def zero(model: torch.nn.Module, key: str, dim: int, units: torch.Tensor, blocks: int = 1) -> None:
    """Zero the weights of `units` along `dim` of tensor `key`, in each of its `blocks` (e.g. LSTM gates)."""
    tensor = model.state_dict()[key]
    size = tensor.shape[dim] // blocks
    with torch.no_grad():
        tensor.index_fill_(dim, torch.cat([units + b * size for b in range(blocks)]), 0.0)


def half(size: int) -> torch.Tensor:
    return torch.randperm(size)[: size // 2]


def kill_half_of_the_units(model: torch.nn.Module, name: str) -> None:
    """Zero every weight that computes or reads half of each layer's units: they then change no output."""
    state = model.state_dict()
    if name in ("mlp", "cnn"):
        layers = [k for k, v in state.items() if k.endswith(".weight") and v.dim() >= 2]
        for computes, reads in itertools.pairwise(layers):
            dead = half(state[computes].shape[0])
            zero(model, computes, 0, dead)
            zero(model, reads, 1, dead)
    elif name == "resnet":  # children: 0 stem conv, 3 4 stage-0 blocks, 5 6 stage-1 blocks, 10 head
        for block in ("3", "4", "5", "6"):
            dead = half(state[f"{block}.body.0.weight"].shape[0])
            zero(model, f"{block}.body.0.weight", 0, dead)
            zero(model, f"{block}.body.3.weight", 1, dead)
        streams = [
            (
                ["0.weight", "3.body.3.weight", "4.body.3.weight"],
                ["3.body.0.weight", "4.body.0.weight", "5.body.0.weight", "5.shortcut.0.weight"],
            ),
            (["5.shortcut.0.weight", "5.body.3.weight", "6.body.3.weight"], ["6.body.0.weight", "10.weight"]),
        ]
        for writers, readers in streams:
            dead = half(state[writers[0]].shape[0])
            for key in writers:
                zero(model, key, 0, dead)
            for key in readers:
                zero(model, key, 1, dead)
    elif name in ("lstm", "gru"):
        rnn, gates = model.rnn, 4 if name == "lstm" else 3
        directions = ("", "_reverse") if rnn.bidirectional else ("",)
        for layer in range(rnn.num_layers):
            readers = (
                [f"rnn.weight_ih_l{layer + 1}{s}" for s in directions]
                if layer + 1 < rnn.num_layers
                else ["head.weight"]
            )
            for d, suffix in enumerate(directions):
                dead = half(rnn.hidden_size)
                for key in (f"rnn.weight_ih_l{layer}{suffix}", f"rnn.weight_hh_l{layer}{suffix}"):
                    zero(model, key, 0, dead, blocks=gates)
                zero(model, f"rnn.weight_hh_l{layer}{suffix}", 1, dead)
                for key in readers:
                    zero(model, key, 1, dead + d * rnn.hidden_size)
    elif name == "transformer":
        for block in range(len(model.blocks)):
            dead = half(state[f"blocks.{block}.mlp.0.weight"].shape[0])
            zero(model, f"blocks.{block}.mlp.0.weight", 0, dead)
            zero(model, f"blocks.{block}.mlp.2.weight", 1, dead)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_pruned_model_is_smaller_and_loads_again_from_its_options(name, tmp_path):
    torch.manual_seed(0)
    input_shape, text, options = FAMILIES[name]
    model = build(name)
    before = parameter_count(model)
    smaller, new_options = prune(
        model, name, options, 0.5, input_shape=input_shape, num_classes=CLASSES, text=text
    )

    after, embedding = parameter_count(smaller), 0 if text is None else model.embed.weight.numel()
    if name == "transformer":  # feed-forward units only: 16 -> 8 per block, each with 2 * width + 1 weights
        assert new_options["ffn_multiplier"] == 1 and before - after == 2 * 8 * (2 * 8 + 1)
    else:  # every layer keeps half its units: each weight matrix keeps between a quarter and a half
        assert 0.5 * 0.95 <= 1 - (after - embedding) / (before - embedding) <= 0.75, (before, after)
    assert parameter_count(model) == before  # the original is left alone
    x = inputs(input_shape, text)
    assert smaller(x).shape == (4, CLASSES)
    rebuilt = reload(tmp_path, smaller, name, new_options, input_shape, text)
    torch.testing.assert_close(rebuilt(x), smaller(x))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_units_that_change_nothing_are_the_ones_removed(name):
    torch.manual_seed(1)
    input_shape, text, options = FAMILIES[name]
    model = build(name)
    kill_half_of_the_units(model, name)
    x = inputs(input_shape, text)
    smaller, _ = prune(model, name, options, 0.5, input_shape=input_shape, num_classes=CLASSES, text=text)
    assert parameter_count(smaller) < parameter_count(model)
    torch.testing.assert_close(smaller(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_small_ratio_removes_the_least_important_quarter():
    torch.manual_seed(2)
    model = build("mlp", hidden=[8])
    dead = torch.tensor([1, 6])
    zero(model, "1.weight", 0, dead)
    zero(model, "5.weight", 1, dead)
    x = torch.randn(4, 20)
    smaller, options = prune(
        model, "mlp", {"hidden": [8]}, 0.25, input_shape=(20,), num_classes=CLASSES, text=None
    )
    assert options == {"hidden": [6]}
    torch.testing.assert_close(smaller(x), model(x), atol=1e-5, rtol=1e-5)


def test_pretrained_loses_half_its_feed_forward_units_and_reloads_from_its_package(tiny_bert, tmp_path):
    torch.manual_seed(3)
    text, options = {"vocab_size": 30522, "pad_id": 0}, {"path": str(tiny_bert)}
    model = build_model("pretrained", (16,), CLASSES, text, **options).eval()
    for layer in model.encoder.encoder.layer:  # 64 feed-forward units per layer; half of them change nothing
        dead = half(64)
        with torch.no_grad():
            layer.intermediate.dense.weight[dead] = 0.0
            layer.output.dense.weight[:, dead] = 0.0
    smaller, new_options = prune(
        model, "pretrained", options, 0.5, input_shape=(16,), num_classes=CLASSES, text=text
    )

    assert parameter_count(model) - parameter_count(smaller) == 2 * 32 * (
        2 * 32 + 1
    )  # 2 layers, 32 units each
    config = json.loads(smaller.package_files()["encoder/config.json"])
    assert config["intermediate_size"] == 32 and model.encoder.config.intermediate_size == 64
    ids = torch.randint(1000, 2000, (4, 16))
    ids[0, 8:] = 0
    torch.testing.assert_close(smaller(ids), model(ids), atol=1e-5, rtol=1e-5)
    rebuilt = reload(tmp_path, smaller, "pretrained", new_options, (16,), text)
    torch.testing.assert_close(rebuilt(ids), smaller(ids))


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5])
def test_a_ratio_outside_zero_to_one_is_named(ratio):
    model = build("mlp")
    with pytest.raises(UserError, match=r"outside \(0, 1\)"):
        prune(model, "mlp", FAMILIES["mlp"][2], ratio, input_shape=(20,), num_classes=CLASSES, text=None)


def test_an_unprunable_family_names_the_prunable_ones():
    with pytest.raises(
        UserError, match="vit.*Prunable families: mlp.*cnn.*resnet.*lstm.*transformer.*pretrained"
    ):
        prune(torch.nn.Linear(2, 2), "vit", {}, 0.5, input_shape=(2,), num_classes=2, text=None)


def test_a_ratio_that_removes_nothing_says_so():
    model = build("transformer", ffn_multiplier=1)  # already the narrowest feed-forward layer
    with pytest.raises(UserError, match="removes no unit.*ffn_multiplier 1.*larger ratio"):
        prune(
            model,
            "transformer",
            {**FAMILIES["transformer"][2], "ffn_multiplier": 1},
            0.5,
            input_shape=(12,),
            num_classes=CLASSES,
            text=TEXT,
        )


def test_resnet_keeps_the_same_channels_everywhere_a_residual_stream_is_added():
    torch.manual_seed(4)
    input_shape, _, options = FAMILIES["resnet"]
    model = build("resnet")  # random BatchNorm means tell the channels apart
    smaller, _ = prune(model, "resnet", options, 0.5, input_shape=input_shape, num_classes=CLASSES, text=None)

    def kept(norm: str) -> list[int]:
        before, after = (
            model.state_dict()[f"{norm}.running_mean"],
            smaller.state_dict()[f"{norm}.running_mean"],
        )
        return [int((before == value).nonzero()) for value in after]

    stage_0, stage_1 = ("1", "3.body.4", "4.body.4"), ("5.shortcut.1", "5.body.4", "6.body.4")
    for stream in (stage_0, stage_1):
        assert len({tuple(kept(norm)) for norm in stream}) == 1, [kept(norm) for norm in stream]
