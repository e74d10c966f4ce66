"""Model shapes and parameter counts, from presets or a Hugging Face-style config.json.

Counting follows the architecture: per layer, attention q,o (d x heads*head_dim) and k,v
(d x kv_heads*head_dim), an MLP of 3 matrices when gated (llama, mistral, qwen2) or 2 otherwise
(bert, gpt2), and norms; plus token embeddings, learned position embeddings where the model has
them, and an LM head unless tied to the embeddings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfoundry.errors import UserError, did_you_mean

GATED_MLP_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "mixtral"}
# Models with biases and LayerNorm (weight + bias); the rest use RMSNorm without biases.
BIASED_TYPES = {"bert", "gpt2", "roberta"}
# Hugging Face's default for tie_word_embeddings is True; these configs default it to False.
UNTIED_BY_DEFAULT = {"llama", "mistral", "qwen2", "mixtral"}
# gpt2's config.json uses its own key names.
ALIASES = {
    "n_layer": "num_hidden_layers",
    "n_embd": "hidden_size",
    "n_head": "num_attention_heads",
    "n_inner": "intermediate_size",
    "n_positions": "max_position_embeddings",
}
REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class ModelSpec:
    """What the planner needs to know about a model.

    Attributes:
        params: total parameters N (the published count for presets).
        non_embedding_params: N minus token/position embeddings and an untied LM head.
        layers, hidden, heads, kv_heads, head_dim: transformer shape.
        source: where the numbers come from.
    """

    name: str
    params: float
    non_embedding_params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    source: str = ""
    context: int = 0  # the model's own context (a foundry GPT run), else 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def count_params(config: dict[str, Any], source: str = "config") -> dict[str, float]:
    """Count parameters from a Hugging Face-style config dict.

    Returns:
        dict with params, non_embedding_params, layers, hidden, heads, kv_heads, head_dim.
    Raises:
        UserError: when a needed field is missing or not a positive integer.
    """
    cfg = {ALIASES.get(k, k): v for k, v in config.items()}
    for key in REQUIRED:
        if cfg.get(key) is None:
            raise UserError(
                f"{source}: missing '{key}', needed to count parameters. A Hugging Face config.json "
                f"has {', '.join(REQUIRED)} and intermediate_size."
            )
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise UserError(f"{source}: '{key}' must be a positive integer; got {cfg[key]!r}.")
    model_type = str(cfg.get("model_type", "")).lower()
    layers, d, heads, vocab = (cfg[k] for k in REQUIRED)
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or d // heads
    ffn = cfg.get("intermediate_size")
    if ffn is None:
        if model_type != "gpt2":
            raise UserError(
                f"{source}: missing 'intermediate_size' (the MLP width), needed to count parameters."
            )
        ffn = 4 * d  # gpt2 leaves n_inner null to mean 4 * n_embd
    biased = model_type in BIASED_TYPES
    mlp_matrices = 3 if model_type in GATED_MLP_TYPES else 2

    q_o = 2 * d * heads * head_dim
    k_v = 2 * d * kv_heads * head_dim
    mlp = mlp_matrices * d * ffn
    if biased:  # biases on every projection, LayerNorm has weight and bias
        attn_bias = 2 * heads * head_dim + 2 * kv_heads * head_dim
        per_layer = q_o + k_v + attn_bias + mlp + ffn + d + 2 * 2 * d
        final_norm = 0 if model_type == "bert" else 2 * d  # BERT's LayerNorm sits in the embeddings
    else:
        qkv_bias = (heads + 2 * kv_heads) * head_dim if model_type == "qwen2" else 0
        per_layer = q_o + k_v + qkv_bias + mlp + 2 * d
        final_norm = d

    tied = cfg.get("tie_word_embeddings", model_type not in UNTIED_BY_DEFAULT)
    token_emb = vocab * d
    lm_head = 0 if tied else vocab * d
    position_emb = cfg.get("max_position_embeddings", 0) * d if biased else 0
    extra = 0
    if model_type == "bert":  # token type embeddings, embedding LayerNorm, pooler
        extra = cfg.get("type_vocab_size", 2) * d + 2 * d + d * d + d
    non_embedding = layers * per_layer + final_norm + extra
    return {
        "params": float(non_embedding + token_emb + lm_head + position_emb),
        "non_embedding_params": float(non_embedding),
        "layers": layers,
        "hidden": d,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
    }


def _llama(
    layers: int, d: int, heads: int, ffn: int, vocab: int, kv_heads: int | None = None
) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "num_hidden_layers": layers,
        "hidden_size": d,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }


# name -> (config, published parameter count, source)
PRESETS: dict[str, tuple[dict[str, Any], float, str]] = {
    "gpt3-175b": (
        {
            "model_type": "gpt2",
            "num_hidden_layers": 96,
            "hidden_size": 12288,
            "num_attention_heads": 96,
            "intermediate_size": 4 * 12288,
            "vocab_size": 50257,
            "max_position_embeddings": 2048,
        },
        175e9,
        "Brown et al. 2020, Language Models are Few-Shot Learners, Table 2.1",
    ),
    "llama-7b": (_llama(32, 4096, 32, 11008, 32000), 6.7e9, "Touvron et al. 2023, LLaMA, Table 2"),
    "llama-13b": (_llama(40, 5120, 40, 13824, 32000), 13.0e9, "Touvron et al. 2023, LLaMA, Table 2"),
    "llama-65b": (_llama(80, 8192, 64, 22016, 32000), 65.2e9, "Touvron et al. 2023, LLaMA, Table 2"),
    "llama3-8b": (
        _llama(32, 4096, 32, 14336, 128256, 8),
        8.0e9,
        "Llama 3 Herd of Models 2024, Table 3; HF config",
    ),
    "llama3-70b": (
        _llama(80, 8192, 64, 28672, 128256, 8),
        70.6e9,
        "Llama 3 Herd of Models 2024, Table 3; HF config",
    ),
    "llama3-405b": (
        _llama(126, 16384, 128, 53248, 128256, 8),
        405e9,
        "Llama 3 Herd of Models 2024, Table 3; HF config",
    ),
    "bert-base": (
        {
            "model_type": "bert",
            "num_hidden_layers": 12,
            "hidden_size": 768,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "vocab_size": 30522,
            "max_position_embeddings": 512,
        },
        110e6,
        "Devlin et al. 2019, BERT; bert-base-uncased config.json",
    ),
    "minilm-l6": (
        {
            "model_type": "bert",
            "num_hidden_layers": 6,
            "hidden_size": 384,
            "num_attention_heads": 12,
            "intermediate_size": 1536,
            "vocab_size": 30522,
            "max_position_embeddings": 512,
        },
        22.7e6,
        "sentence-transformers/all-MiniLM-L6-v2 model card and config.json",
    ),
}


def get_model(name: str) -> ModelSpec:
    """A preset by name, with its published parameter count and shape from its config."""
    key = name.lower()
    if key not in PRESETS:
        raise UserError(
            f"--model '{name}' is not a known model; choose one of {', '.join(PRESETS)}, "
            f"or pass --params or --config." + did_you_mean(name, PRESETS)
        )
    config, published, source = PRESETS[key]
    counted = count_params(config, source=key)
    # Keep the published total; scale non-embedding params by the same embedding count.
    embedding = counted["params"] - counted["non_embedding_params"]
    return ModelSpec(
        key,
        published,
        published - embedding,
        counted["layers"],
        counted["hidden"],
        counted["heads"],
        counted["kv_heads"],
        counted["head_dim"],
        source,
    )


def model_from_config(path: str | Path) -> ModelSpec:
    """A ModelSpec counted from a config.json file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file; pass a Hugging Face config.json.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"--config {path}: not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise UserError(f"--config {path}: expected a JSON object of config fields.")
    counted = count_params(config, source=str(path))
    return ModelSpec(
        path.stem if path.stem != "config" else path.parent.name or "config",
        counted["params"],
        counted["non_embedding_params"],
        counted["layers"],
        counted["hidden"],
        counted["heads"],
        counted["kv_heads"],
        counted["head_dim"],
        str(path),
    )


def model_from_params(params: float) -> ModelSpec:
    """A model known only by its size; shape-dependent estimates (KV cache, activations) need more."""
    if params <= 0:
        raise UserError(f"--params must be a positive number of parameters, e.g. 7e9; got {params}.")
    return ModelSpec(f"{params:.3g} params", params, params, 0, 0, 0, 0, 0, "--params")


BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def model_from_run(run: str | Path) -> ModelSpec:
    """The exact parameter count of a foundry run's packaged model, read from the safetensors header
    (8-byte length + JSON of names and shapes), so no weights are loaded and torch is not imported."""
    folder = _package_folder(run)
    with open(folder / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    params = sum(
        math.prod(entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__" and not name.endswith(BUFFER_SUFFIXES)
    )
    spec = json.loads((folder / "model.json").read_text())
    name = f"{spec.get('run_id', folder.parent.name)} ({spec['model']['name']})"
    options = spec["model"].get("options") or {}
    if "architecture" in spec:  # a fine-tuned pretrained LM (llm/sft.py): a LoRA package holds the adapter
        source = f"run package {folder} (base {spec['base_model']['description']})"
        return _gpt_spec(name, float(spec["parameters"]), spec["architecture"], spec["preprocessing"], source)
    if "n_layer" in options:  # a decoder (models/gpt.py): its shape, for FLOPs per token and the KV cache
        return _gpt_spec(name, float(params), options, spec.get("preprocessing", {}), f"run package {folder}")
    return ModelSpec(name, float(params), float(params), 0, 0, 0, 0, 0, f"run package {folder}")


def _gpt_spec(name: str, params: float, options: dict, preprocessing: dict, source: str) -> ModelSpec:
    """A GPT run's shape; its non-embedding parameters leave out the token table (tied to the output layer,
    whose matmul `2 N` then does not count: Kaplan et al.'s convention) and a learned position table."""
    hidden, heads = options["n_embd"], options["n_head"]
    context = options.get("block_size") or preprocessing.get("block_size") or 0
    embeddings = preprocessing.get("vocab_size", 0) * hidden
    if options.get("positions", "learned") == "learned":
        embeddings += context * hidden
    return ModelSpec(
        name,
        params,
        params - embeddings,
        options["n_layer"],
        hidden,
        heads,
        options.get("n_kv_head") or heads,
        hidden // heads,
        source,
        context,
    )


def _package_folder(run: str | Path) -> Path:
    from modelfoundry.store.registry import resolve_run

    root = resolve_run(str(run))
    for folder in (root / "model", root):
        if (folder / "model.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    raise UserError(
        f"--run {run}: no model package in {root} (expected model/model.safetensors); "
        "is the run finished? `foundry runs list` shows each run's status."
    )
