"""A tiny Hugging Face encoder folder (2 layers, 32 wide, the real MiniLM tokenizer) for fast tests
of the `pretrained` family: the same code path as the shipped MiniLM at a thousandth of the cost."""

from __future__ import annotations

import shutil
from pathlib import Path


def write_tiny_bert(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    from modelfoundry.data.text import default_model_path

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(default_model_path() / name, folder / name)
    return folder
