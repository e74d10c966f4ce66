"""Structured pruning: remove whole neurons, channels, hidden units and feed-forward units, so the
model really has fewer weights and runs faster on a CPU (a mask that zeroes weights saves nothing).

Packages are rebuilt from builder options, so pruning is uniform and expressed in those options
(mlp `hidden`, cnn / resnet `width`, lstm / gru `hidden`, transformer `ffn_multiplier`, pretrained
`intermediate_size` in the encoder's config.json). The smaller model is built by the normal builder
and the surviving weights are copied in; which units survive is chosen per layer by importance:
the L1 norm of every weight that computes the unit or reads it.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from pathlib import Path

import torch
from torch import nn

from modelfoundry.errors import UserError
from modelfoundry.models.registry import build_model, model_options
from modelfoundry.models.resnet import BasicBlock

# For each pruned tensor (by state_dict key), the unit groups along its leading dims: (rows, columns).
# Several groups on one dim lie end to end (an LSTM's four gates, a bidirectional layer's two
# directions); () leaves that dim whole. Units of one group are kept or removed together everywhere.
Plan = dict[str, tuple[tuple[str, ...], ...]]
PRUNABLE = (
    "mlp (hidden units)",
    "cnn (channels)",
    "resnet (channels)",
    "lstm and gru (hidden units)",
    "transformer (feed-forward units)",
    "pretrained (feed-forward units of BERT-style encoders)",
)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune(
    model: nn.Module,
    name: str,
    options: dict,
    ratio: float,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    text: dict | None,
) -> tuple[nn.Module, dict]:
    """Remove `ratio` of the units of every prunable layer, keeping the most important ones.

    Args:
        model: a model built by `build_model(name, input_shape, num_classes, text, **options)`; not changed.
        ratio: fraction of units to remove, 0 < ratio < 1; each layer keeps round(units * (1 - ratio)), at least 1.

    Returns:
        (the smaller model with the kept weights, its options). The model is exactly what `build_model`
        builds from those options; for `pretrained` the options are unchanged and the smaller
        architecture lives in the encoder config that `model.package_files()` writes.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise UserError(
            f"prune ratio: {ratio!r} is outside (0, 1). Give the fraction of units to remove, "
            "e.g. 0.5 removes half of every layer's units."
        )
    if name not in PLANNERS and name != "pretrained":
        raise UserError(f"prune: model '{name}' can't be pruned. Prunable families: {', '.join(PRUNABLE)}.")
    if name == "pretrained":
        smaller, plan, what = _pretrained(model, options, ratio, tuple(input_shape), num_classes, text)
        new_options = dict(options)
    else:
        changes, plan = PLANNERS[name](model, {**model_options(name), **options}, ratio)
        new_options, what = {**options, **changes}, ", ".join(f"{k} {v}" for k, v in changes.items())
        smaller = build_model(name, tuple(input_shape), num_classes, text, **new_options)
    if parameter_count(smaller) >= parameter_count(model):
        raise UserError(
            f"prune ratio: {ratio} removes no unit of this '{name}' model (it would keep {what}). "
            "Use a larger ratio."
        )
    smaller.load_state_dict(_kept_weights(model.state_dict(), smaller.state_dict(), plan))
    device = next(model.parameters()).device
    return smaller.to(device).train(model.training), new_options


def _shrink(units: int, ratio: float) -> int:
    return max(1, round(units * (1 - ratio)))


def _kept_weights(
    old: dict[str, torch.Tensor], new: dict[str, torch.Tensor], plan: Plan
) -> dict[str, torch.Tensor]:
    """The old state_dict cut down to the new model's shapes, keeping each group's most important units."""
    sizes: dict[str, tuple[int, int]] = {}  # group -> (units before, units after)
    for key, dims in plan.items():
        for dim, groups in enumerate(dims):
            for group in groups:
                sizes[group] = (old[key].shape[dim] // len(groups), new[key].shape[dim] // len(groups))
    importance: dict[str, torch.Tensor] = {}
    for key, dims in plan.items():
        weight = old[key].detach().float().abs()
        if weight.dim() < 2:  # biases and norms say little about a unit's use
            continue
        for dim, groups in enumerate(dims):
            if not groups:
                continue
            per_unit = weight.transpose(0, dim).flatten(1).sum(1)  # (units along dim,)
            for group, part in zip(groups, per_unit.split([sizes[g][0] for g in groups])):
                importance[group] = importance.get(group, 0) + part
    keep = {group: importance[group].topk(after).indices.sort().values for group, (_, after) in sizes.items()}
    kept = {key: value for key, value in old.items() if key not in plan}
    for key, dims in plan.items():
        tensor = old[key]
        for dim, groups in enumerate(dims):
            if groups:
                starts = itertools.accumulate([sizes[g][0] for g in groups[:-1]], initial=0)
                tensor = tensor.index_select(
                    dim, torch.cat([keep[g] + start for g, start in zip(groups, starts)])
                )
        kept[key] = tensor
    return kept


def _norm(name: str, group: tuple[str, ...]) -> Plan:
    return {f"{name}.{p}": (group,) for p in ("weight", "bias", "running_mean", "running_var")}


def _chain(model: nn.Module) -> Plan:
    """MLP / CNN: each Linear or Conv2d computes units that only the next one reads (BatchNorm between)."""
    layers = [n for n, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))]
    plan: Plan = {}
    reads: tuple[str, ...] = ()  # the input features are never pruned
    for name, module in model.named_children():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            writes = () if name == layers[-1] else (name,)  # the last layer computes the logits
            plan[f"{name}.weight"] = (writes, reads)
            if module.bias is not None:
                plan[f"{name}.bias"] = (writes,)
            reads = writes
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            plan |= _norm(name, reads)
    return plan


def _mlp(model: nn.Module, options: dict, ratio: float) -> tuple[dict, Plan]:
    return {"hidden": [_shrink(h, ratio) for h in options["hidden"]]}, _chain(model)


def _cnn(model: nn.Module, options: dict, ratio: float) -> tuple[dict, Plan]:
    return {"width": _shrink(options["width"], ratio)}, _chain(model)


def _resnet(model: nn.Module, options: dict, ratio: float) -> tuple[dict, Plan]:
    """Channels of a stage's residual stream are added together by every block of the stage, so the
    stem, the blocks' second convs, the 1x1 shortcuts and all their readers share one keep-set."""
    stream = ("stem",)  # children 0 and 1 are the stem's conv and BatchNorm; stage 0 adds into its output
    plan: Plan = {"0.weight": (stream, ()), **_norm("1", stream)}
    for name, module in model.named_children():
        if isinstance(module, BasicBlock):
            inner, out = (f"{name}.body",), stream
            if isinstance(module.shortcut, nn.Sequential):  # a 1x1 conv starts the next stage's stream
                out = (f"{name}.shortcut",)
                plan |= {f"{name}.shortcut.0.weight": (out, stream), **_norm(f"{name}.shortcut.1", out)}
            plan |= {
                f"{name}.body.0.weight": (inner, stream),
                **_norm(f"{name}.body.1", inner),
                f"{name}.body.3.weight": (out, inner),
                **_norm(f"{name}.body.4", out),
            }
            stream = out
        elif isinstance(module, nn.Linear):
            plan |= {f"{name}.weight": ((), stream)}
    return {"width": _shrink(options["width"], ratio)}, plan


def _rnn(model: nn.Module, options: dict, ratio: float) -> tuple[dict, Plan]:
    """Hidden units per layer and direction; a unit's rows in every gate block go with it."""
    rnn = model.rnn
    gates = 4 if isinstance(rnn, nn.LSTM) else 3  # LSTM: input, forget, cell, output; GRU: reset, update, new
    suffixes = ("", "_reverse") if rnn.bidirectional else ("",)
    plan: Plan = {}
    reads: tuple[str, ...] = ()  # the first layer reads the embeddings, which keep their width
    for layer in range(rnn.num_layers):
        units = tuple(f"l{layer}{suffix}" for suffix in suffixes)
        for unit, suffix in zip(units, suffixes):
            rows = (unit,) * gates
            plan |= {
                f"rnn.weight_ih_l{layer}{suffix}": (rows, reads),
                f"rnn.weight_hh_l{layer}{suffix}": (rows, (unit,)),
                f"rnn.bias_ih_l{layer}{suffix}": (rows,),
                f"rnn.bias_hh_l{layer}{suffix}": (rows,),
            }
        reads = units  # the next layer and the head read [forward, backward] outputs
    plan["head.weight"] = ((), reads)
    return {"hidden": _shrink(options["hidden"], ratio)}, plan


def _transformer(model: nn.Module, options: dict, ratio: float) -> tuple[dict, Plan]:
    """Feed-forward units only: heads can't go, since the head width is width / heads and width feeds
    the embeddings; `ffn_multiplier` is whole, so a block keeps a multiple of `width` units."""
    plan: Plan = {}
    for index in range(len(model.blocks)):
        units, prefix = (f"blocks.{index}",), f"blocks.{index}.mlp"
        plan |= {
            f"{prefix}.0.weight": (units, ()),
            f"{prefix}.0.bias": (units,),
            f"{prefix}.2.weight": ((), units),
        }
    return {"ffn_multiplier": _shrink(options["ffn_multiplier"], ratio)}, plan


def _pretrained(
    model: nn.Module,
    options: dict,
    ratio: float,
    input_shape: tuple[int, ...],
    num_classes: int,
    text: dict | None,
) -> tuple[nn.Module, Plan, str]:
    """Feed-forward units of each layer of a BERT-style encoder, through `intermediate_size` in its config.

    Attention heads stay: transformers 5 dropped `prune_heads` / `pruned_heads`, and the head width is
    hidden_size / num_attention_heads, so fewer heads can't be rebuilt from a config.
    """
    config, modules = model.encoder.config, dict(model.named_modules())
    prefixes = [
        n.removesuffix("intermediate.dense")
        for n, m in modules.items()
        if n.endswith(".intermediate.dense") and isinstance(m, nn.Linear)
    ]
    if (
        not prefixes
        or not isinstance(getattr(config, "intermediate_size", None), int)
        or not all(isinstance(modules.get(f"{p}output.dense"), nn.Linear) for p in prefixes)
    ):
        raise UserError(
            f"prune: the '{config.model_type}' encoder of this pretrained model has no BERT-style "
            "feed-forward layers (intermediate.dense, output.dense, config intermediate_size) to prune. "
            f"Prunable: {', '.join(PRUNABLE)}; e.g. bert, roberta, electra and MiniLM encoders."
        )
    plan: Plan = {}
    for prefix in prefixes:
        units = (prefix,)
        plan |= {
            f"{prefix}intermediate.dense.weight": (units, ()),
            f"{prefix}intermediate.dense.bias": (units,),
            f"{prefix}output.dense.weight": ((), units),
        }
    pruned = copy.deepcopy(config)
    pruned.intermediate_size = _shrink(config.intermediate_size, ratio)
    # The package rebuilds the encoder from its config.json, as `predictor.load` does.
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(pruned.to_json_string())
        smaller = build_model(
            "pretrained",
            input_shape,
            num_classes,
            text,
            **{**options, "path": folder, "pretrained_weights": False},
        )
    smaller.encoder.config.name_or_path = config.name_or_path  # not the temporary folder
    return smaller, plan, f"intermediate_size {pruned.intermediate_size}"


PLANNERS = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet": _resnet,
    "lstm": _rnn,
    "gru": _rnn,
    "transformer": _transformer,
}
