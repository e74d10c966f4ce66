"""`foundry export RUN --merge` and `--format gguf` for a fine-tuned pretrained_lm.

--merge: the adapter folded into the base weights, written as a Hugging Face folder (config.json,
model.safetensors under Llama's names, the tokenizer and its chat template) that transformers loads as
LlamaForCausalLM; transformers' logits are checked against adapter + base before the folder is kept.
--format gguf: the same weights (merged first when there is an adapter) in one GGUF file written with the
`gguf` package, as llama.cpp's converter lays a Llama out (q/k rows permuted to GGML's rotary order,
float32 tensors, the BPE vocabulary, merges and chat template in the metadata).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from modelfoundry.errors import UserError
from modelfoundry.llm import lora
from modelfoundry.llm.convert import to_llama

PARITY_TEXT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis"


def package_spec(folder: Path) -> dict:
    """model.json of a pretrained_lm package; UserError for other packages."""
    spec = json.loads((folder / "model.json").read_text())
    if spec["model"]["name"] != "pretrained_lm":
        raise UserError(
            f"{folder}: a '{spec['model']['name']}' model; --merge and --format gguf/hf export fine-tuned "
            "pretrained_lm models. Use --format onnx for this one."
        )
    return spec


def load_run(folder: Path):
    """(model with its adapter, spec) of a pretrained_lm package; UserError for other packages."""
    package_spec(folder)
    from modelfoundry.models.pretrained_lm import load_package

    return load_package(folder)


def llama_config(config, tokenizer) -> dict:
    """config.json of a LlamaForCausalLM with our GPT's shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_size,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "bos_token_id": tokenizer.hf.bos_token_id,
        "torch_dtype": "float32",
    }


def merged_state(model) -> dict[str, torch.Tensor]:
    """The model's weights with any adapter merged in, under Llama's names (the model is left unchanged)."""
    lora.merge(model)
    try:
        state = {
            k.replace(".base.", "."): v.detach().clone().contiguous()
            for k, v in model.state_dict().items()
            if ".lora_" not in k
        }
    finally:
        lora.unmerge(model)
    return to_llama(state, model.config.tie_embeddings)


def export_hf(folder: Path, out: Path, merge: bool = True, tolerance: float = 1e-4) -> dict:
    """Write the Hugging Face folder `out` (the adapter merged in); returns {"max_logit_difference", "path"}.

    merge=True (`--merge`) on a full fine-tune is a UserError: there is no adapter to merge."""
    from safetensors.torch import save_file

    from modelfoundry.llm.hf import quiet_transformers
    from modelfoundry.runfiles import atomic_folder

    quiet_transformers()
    from transformers import LlamaForCausalLM

    spec = package_spec(folder)
    if merge and not spec["model"]["options"].get("adapter"):
        raise UserError(
            f"--merge: {folder} is a full fine-tune (train.method: full): its package already holds every "
            "weight, so there is no adapter to merge. Export it with --format hf (a Hugging Face folder) "
            "or --format gguf instead."
        )
    model, spec = load_run(folder)
    tokenizer = model.tokenizer
    with atomic_folder(out) as tmp:
        save_file(merged_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(llama_config(model.config, tokenizer), indent=2))
        tokenizer.save(tmp)
        reference = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        ids = torch.tensor([tokenizer.encode(PARITY_TEXT)[: model.config.block_size]])
        with torch.no_grad():
            difference = (reference(ids).logits - model(ids)).abs().max().item()
        if difference > tolerance:
            raise UserError(
                f"export: transformers' logits of the merged model differ from adapter + base by "
                f"{difference:.2e}, more than the allowed {tolerance:g}; nothing was written."
            )
    return {"max_logit_difference": difference, "path": str(out)}


# ---- GGUF --------------------------------------------------------------------------------------

GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's converter: q/k rows from Hugging Face's rotate-half order to GGML's interleaved pairs."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def export_gguf(folder: Path, out: Path) -> dict:
    """Write one GGUF file (float32) of the fine-tuned model; returns {"path", "tensors", "bytes"}."""
    import gguf

    from modelfoundry.runfiles import atomic_path

    model, spec = load_run(folder)
    config, tokenizer = model.config, model.tokenizer
    state = merged_state(model)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(f"modelfoundry {spec.get('run_id', folder.name)}")
        writer.add_context_length(config.block_size)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.n_head)
        writer.add_head_count_kv(config.n_kv_head)
        writer.add_rope_dimension_count(config.head_size)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        _add_tokenizer(writer, tokenizer, gguf)
        count = 0
        for name, tensor in state.items():
            if name in GGUF_NAMES:
                target = GGUF_NAMES[name]
            else:
                _, _, layer, rest = name.split(".", 3)  # model.layers.{i}.{rest}
                part = rest.removesuffix(".weight")
                target = f"blk.{layer}.{GGUF_LAYER[part]}.weight"
                if part == "self_attn.q_proj":
                    tensor = _permute(tensor, config.n_head)
                elif part == "self_attn.k_proj":
                    tensor = _permute(tensor, config.n_kv_head)
            writer.add_tensor(target, tensor.float().numpy())
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"path": str(out), "tensors": count, "bytes": out.stat().st_size}


def _add_tokenizer(writer, tokenizer, gguf) -> None:
    """The byte-level BPE vocabulary (GPT-2 style, as llama.cpp reads it), merges, special ids, template."""
    data = json.loads(tokenizer.hf.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise UserError(
            f"--format gguf: the tokenizer is {model.get('type')}, and this export writes byte-level BPE "
            "tokenizers only. Export with --merge (a Hugging Face folder) instead."
        )
    vocab = dict(model["vocab"])
    for added in data.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [""] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    special = {a["id"] for a in data.get("added_tokens", []) if a.get("special")}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    hf = tokenizer.hf
    for add, value in (
        (writer.add_bos_token_id, hf.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_id),
        (writer.add_pad_token_id, tokenizer.pad_id),
        (writer.add_unk_token_id, hf.unk_token_id),
    ):
        if value is not None:
            add(value)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
