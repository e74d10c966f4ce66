"""Model families by name. Adding one = one new file with a `build_*` function + one line here."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from modelfoundry.errors import UserError, did_you_mean
from modelfoundry.models.cnn import build_cnn
from modelfoundry.models.mlp import build_mlp
from modelfoundry.models.pretrained import build_pretrained
from modelfoundry.models.resnet import build_resnet
from modelfoundry.models.rnn import build_gru, build_lstm
from modelfoundry.models.transformer import build_transformer

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "resnet": build_resnet,
    "lstm": build_lstm,
    "gru": build_gru,
    "transformer": build_transformer,
    "pretrained": build_pretrained,
}
IMAGE_ONLY = {"cnn", "resnet"}
# Text families take token ids (B, T); the data adds the tokenizer's vocab_size and pad_id.
TEXT_ONLY = {"lstm", "gru", "transformer", "pretrained"}


def model_options(name: str) -> dict[str, object]:
    """The keyword arguments a family accepts, with their defaults."""
    params = list(inspect.signature(BUILDERS[name]).parameters.values())[4 if name in TEXT_ONLY else 2 :]
    return {p.name: p.default for p in params}


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, text: dict | None = None, **options
) -> nn.Module:
    """Build family `name` for examples of `input_shape`; unknown names and options are UserErrors.

    Args:
        text: for text data, {"vocab_size", "pad_id"} of the tokenizer; None for images and tables.
    """
    if name not in BUILDERS:
        raise UserError(
            f"model.name: unknown model '{name}'.{did_you_mean(name, BUILDERS)} "
            f"Available: {', '.join(BUILDERS)}."
        )
    if (name in TEXT_ONLY) != (text is not None):
        families = ", ".join(sorted(TEXT_ONLY))
        raise UserError(
            f"model.name: '{name}' is not a model for this data. "
            + (
                f"Text takes one of {families}."
                if text
                else f"{families} take text; use mlp for tables and cnn, resnet or mlp for images."
            )
        )
    if name in IMAGE_ONLY and len(input_shape) != 3:
        raise UserError(
            f"model.name: '{name}' needs images (C, H, W); this data has shape {input_shape}. "
            "Use model.name: mlp for tables."
        )
    allowed = model_options(name)
    for key, value in options.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if key in (
            "width",
            "depth",
            "hidden",
            "blocks_per_stage",
            "heads",
            "layers",
            "embed_dim",
        ) and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise UserError(
                f"model.{key}: {value!r} must be a positive whole number"
                + (" (or a list of them)" if key == "hidden" else "")
                + "."
            )
        if key == "freeze_layers" and not (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ):
            raise UserError(f"model.freeze_layers: {value!r} must be a whole number of layers, 0 or more.")
        if key == "dropout" and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise UserError(f"model.dropout: {value!r} must be in [0, 1).")
    problems = [
        f"model.{key}: not an option of '{name}'.{did_you_mean(key, allowed)}"
        for key in options
        if key not in allowed
    ]
    if problems:
        raise UserError(
            "\n".join(problems)
            + f"\nOptions of '{name}': "
            + ", ".join(f"{k} (default {v!r})" for k, v in allowed.items())
        )
    data_args = {"vocab_size": text["vocab_size"], "pad_id": text["pad_id"]} if text is not None else {}
    try:
        return BUILDERS[name](tuple(input_shape), num_classes, **data_args, **options)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"model: options {options} do not build a '{name}': {exc}.") from None
