"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update, in one small module.

    y = x W^T + b + dropout(x) A^T B^T * (alpha / r)        A (r, in), B (out, r), B starts at zero

so a fresh adapter leaves the model's outputs unchanged. `add_lora` wraps the named linear layers of a
model in place and freezes everything else; `adapter_state` is what a package stores (the A and B
matrices alone, a few hundred KB); `merge`/`unmerge` fold the update into the base weights and back
(`foundry export --merge`). Our own module rather than PEFT's: bench/lora.py measures both on the same
model and batch (bench/RESULTS.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modelfoundry.errors import UserError

ALL_LINEAR = "all-linear"


class LoRALinear(nn.Module):
    """`base` (an nn.Linear, frozen) plus the low-rank update `lora_B @ lora_A` scaled by alpha / r."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and PEFT) initialise
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x):  # x (..., in) -> (..., out)
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta(self) -> torch.Tensor:
        """The update to the base weight, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta().to(self.base.weight.dtype)
            self.merged = False


def linear_names(model: nn.Module, aliases: dict[str, str] | None = None) -> list[str]:
    """The short names of the linear layers LoRA can wrap (the last part of their path: q, v, up...), each
    once, in the user's words (`aliases` maps ours to theirs: q -> q_proj). A tied output layer is not one."""
    aliases, tied = aliases or {}, _tied_outputs(model)
    names = [
        n.rsplit(".", 1)[-1]
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, LoRALinear)) and n not in tied and not n.endswith(".base")
    ]
    return list(dict.fromkeys(aliases.get(n, n) for n in names))


def add_lora(
    model: nn.Module,
    targets: list[str] | str,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.05,
    aliases: dict[str, str] | None = None,
) -> list[str]:
    """Wrap the linear layers named in `targets` (their last path part, or `all-linear`) in LoRALinear and
    freeze every other weight. Never the output layer when it shares its weight with the embedding.

    `aliases`: the user's names for ours (q_proj -> q), so Llama's names select GPT's layers.
    Returns the wrapped modules' paths. A target that matches no linear layer is a UserError that lists
    the ones the model has.
    """
    chosen = targeted(model, targets, aliases)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, LoRALinear(getattr(holder, child), r, alpha, dropout))
    return chosen


def targeted(model: nn.Module, targets: list[str] | str, aliases: dict[str, str] | None = None) -> list[str]:
    """The paths of the linear layers `targets` selects (see add_lora); UserError for a target that
    matches none, listing the ones there are."""
    aliases = aliases or {}
    ours_of = {theirs: ours for ours, theirs in aliases.items()}
    tied = _tied_outputs(model)
    everything = targets in (ALL_LINEAR, [ALL_LINEAR])
    wanted = set() if everything else {ours_of.get(t, t) for t in targets}
    chosen = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name not in tied
        and (everything or name.rsplit(".", 1)[-1] in wanted)
    ]
    found = {n.rsplit(".", 1)[-1] for n in chosen}
    missing = [t for t in ([] if everything else targets) if ours_of.get(t, t) not in found]
    if missing:
        have = linear_names(model, aliases)
        raise UserError(
            f"train.lora.targets: {', '.join(map(repr, missing))} match no linear layer of this model. Its "
            f"linear layers: {', '.join(have)} (or all-linear for every one of them)."
            + (" The output layer shares the embedding's weight and takes no adapter." if tied else "")
        )
    return chosen


def _tied_outputs(model: nn.Module) -> set[str]:
    """Linear layers whose weight is also an embedding's (a tied lm_head): LoRA on them would change the
    embedding too (PEFT refuses them as well)."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in embedded}


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone: every LoRA A and B matrix by its path (`blocks.0.attn.q.lora_A`)."""
    return {
        f"{name}.{part}": getattr(layer, part).detach().contiguous()
        for name, layer in lora_layers(model).items()
        for part in ("lora_A", "lora_B")
    }


def load_adapter(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put a saved adapter into a model wrapped by `add_lora` with the same targets and rank."""
    layers = lora_layers(model)
    expected = {f"{n}.{p}" for n in layers for p in ("lora_A", "lora_B")}
    if set(state) != expected:
        raise UserError(
            f"adapter: its layers ({len(state)} tensors) differ from the model's LoRA layers "
            f"({len(expected)}); it was trained with other lora.targets. Use the run's own config."
        )
    with torch.no_grad():
        for key, value in state.items():
            name, _, part = key.rpartition(".")
            getattr(layers[name], part).copy_(value)


def merge(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def strip(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put the plain nn.Linear back (export), in place."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.base)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
