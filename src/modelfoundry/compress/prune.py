"""Structured pruning: remove whole neurons, channels, hidden units and feed-forward units, so the
model really has fewer weights and runs faster on a CPU (a mask that zeroes weights saves nothing).

Packages are rebuilt from builder options, so pruning is uniform and expressed in those options
(mlp `hidden`, cnn / resnet `width`, lstm / gru `hidden`, transformer `ffn_multiplier`, pretrained
`intermediate_size` in the encoder's config.json). Each family's file in `models/` says which of its
options shrinks and which tensors hold which units (its `prune_*` function, named in the registry);
this file builds the smaller model through the normal builder and copies the surviving weights in.
Which units survive is chosen per layer by importance: the L1 norm of every weight that computes the
unit or reads it.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from modelfoundry.errors import UserError
from modelfoundry.models.registry import FAMILIES, build_model, family_function, model_options, prunable

# For each pruned tensor (by state_dict key), the unit groups along its leading dims: (rows, columns).
# Several groups on one dim lie end to end (an LSTM's four gates, a bidirectional layer's two
# directions); () leaves that dim whole. Units of one group are kept or removed together everywhere.
Plan = dict[str, tuple[tuple[str, ...], ...]]


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
        ratio: fraction of units to remove, 0 < ratio < 1; each layer keeps round(units * (1 - ratio)),
            at least 1.

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
    if name not in FAMILIES or FAMILIES[name].prune is None:
        raise UserError(f"prune: model '{name}' can't be pruned. Prunable families: {prunable()}.")

    def build(**changes) -> nn.Module:
        return build_model(name, tuple(input_shape), num_classes, text, **{**options, **changes})

    prune_family = family_function(name, FAMILIES[name].prune)
    smaller, changes, plan = prune_family(model, {**model_options(name), **options}, ratio, build)
    if parameter_count(smaller) >= parameter_count(model):
        what = ", ".join(f"{k} {v}" for k, v in changes.items())
        raise UserError(
            f"prune ratio: {ratio} removes no unit of this '{name}' model"
            + (f" (it would keep {what})" if what else "")
            + ". Use a larger ratio."
        )
    smaller.load_state_dict(_kept_weights(model.state_dict(), smaller.state_dict(), plan))
    device = next(model.parameters()).device
    return smaller.to(device).train(model.training), {**options, **changes}


def shrink(units: int, ratio: float) -> int:
    """The units a layer keeps when `ratio` of them are removed: at least one."""
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


def norm_plan(name: str, group: tuple[str, ...]) -> Plan:
    """The BatchNorm `name` over the units of `group`."""
    return {f"{name}.{p}": (group,) for p in ("weight", "bias", "running_mean", "running_var")}


def chain_plan(model: nn.Module) -> Plan:
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
            plan |= norm_plan(name, reads)
    return plan
