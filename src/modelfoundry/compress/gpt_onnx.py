"""ONNX export of the GPT (models/gpt.py) as a decoder with past keys and values, its parity check, greedy
decoding in ONNX Runtime, and int8 dynamic quantization.

The graph (the usual ONNX decoder layout, as Hugging Face Optimum exports GPT-2):
    inputs:  input_ids (B, T) int64; past_keys, past_values (n_layer, B, n_kv_head, P, head_size) float32
    outputs: logits (B, T, V); present_keys, present_values (n_layer, B, n_kv_head, P + T, head_size)
with B, T and P dynamic. The prompt is fed with P = 0 (empty pasts), then one token at a time with the
presents of the step before as the pasts: each new token costs one position, as with the PyTorch cache.
All rows of a batch share P (the server's continuous batching stays in PyTorch, where rows of different
lengths decode together). `GPTWithPast` computes exactly what `GPT.forward` does, with the cache passed in
and out instead of written in place (which ONNX cannot express); the parity check holds it to GPT.forward.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelfoundry.errors import UserError

OPSET = 18
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| of any next-token probability
PARITY_STEPS = 8  # tokens fed one at a time through the pasts after the prompt, in the parity check
INPUTS = ["input_ids", "past_keys", "past_values"]
OUTPUTS = ["logits", "present_keys", "present_values"]


class GPTWithPast(nn.Module):
    """A GPT's forward with the cache as inputs and outputs. Shapes as in the module docstring."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids, past_keys, past_values):
        g, cfg = self.gpt, self.gpt.config
        B, T = input_ids.shape
        P = past_keys.shape[3]
        positions = torch.arange(T, device=input_ids.device)[None] + P  # (1, T)
        x = g.wte(input_ids)  # (B, T, C)
        rope = None
        if cfg.positions == "learned":
            x = x + g.wpe(positions)
        else:
            rope = (g.rope_cos[positions][:, None], g.rope_sin[positions][:, None])  # (1, 1, T, hs)
        # new token t sees positions 0..P+t
        mask = torch.arange(P + T, device=x.device)[None, :] <= positions[0][:, None]  # (T, P+T)
        keys, values = [], []
        for layer, block in enumerate(g.blocks):
            attn, h = block.attn, block.norm1(x)
            q = attn.q(h).view(B, T, attn.n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
            k = attn.k(h).view(B, T, attn.n_kv_head, -1).transpose(1, 2)  # (B, nkv, T, hs)
            v = attn.v(h).view(B, T, attn.n_kv_head, -1).transpose(1, 2)
            if rope is not None:
                q = q * rope[0] + _rotate_half(q) * rope[1]
                k = k * rope[0] + _rotate_half(k) * rope[1]
            k = torch.cat([past_keys[layer], k], dim=2)  # (B, nkv, P+T, hs)
            v = torch.cat([past_values[layer], v], dim=2)
            keys.append(k)
            values.append(v)
            if attn.n_kv_head != attn.n_head:  # grouped-query attention: each kv head serves a group
                repeat = attn.n_head // attn.n_kv_head
                k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
            x = x + attn.proj(y.transpose(1, 2).reshape(B, T, -1))
            x = x + block.mlp(block.norm2(x))
        return g.lm_head(g.norm(x)), torch.stack(keys), torch.stack(values)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def empty_past(config, batch: int = 1) -> np.ndarray:
    """Pasts of length 0: (n_layer, B, n_kv_head, 0, head_size)."""
    return np.zeros((config.n_layer, batch, config.n_kv_head, 0, config.head_size), np.float32)


def export_gpt(gpt, path: Path) -> None:
    """Write one self-contained .onnx file of `GPTWithPast(gpt)` with dynamic batch, tokens and past."""
    import onnx

    cfg = gpt.config
    wrapper = GPTWithPast(gpt.cpu().eval()).eval()
    ids = torch.zeros((2, 3), dtype=torch.long)
    past = torch.zeros((cfg.n_layer, 2, cfg.n_kv_head, 5, cfg.head_size))
    axes = {
        "input_ids": {0: "batch", 1: "tokens"},
        "past_keys": {1: "batch", 3: "past"},
        "past_values": {1: "batch", 3: "past"},
        "logits": {0: "batch", 1: "tokens"},
        "present_keys": {1: "batch", 3: "total"},
        "present_values": {1: "batch", 3: "total"},
    }
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as scratch:
        warnings.simplefilter("ignore")
        exported = Path(scratch) / "model.onnx"
        # the TorchScript exporter: torch.export would specialise the past length (0 for a prompt, > 1 after)
        torch.onnx.export(
            wrapper,
            (ids, past, past),
            str(exported),
            input_names=INPUTS,
            output_names=OUTPUTS,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
        onnx.save_model(onnx.load(str(exported)), str(path))


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess, ids: np.ndarray, past_keys: np.ndarray, past_values: np.ndarray):
    """(logits, present_keys, present_values) of one call."""
    return sess.run(None, {"input_ids": ids, "past_keys": past_keys, "past_values": past_values})


@torch.inference_mode()
def parity(gpt, sess, prompts: torch.Tensor, steps: int = PARITY_STEPS) -> float:
    """Largest difference of any next-token probability between the graph and GPT.forward (no cache) over
    a prompt prefilled at once and then `steps` tokens fed one at a time through the pasts.

    prompts: (B, T) token ids with T + steps <= block_size."""
    cfg = gpt.config
    ids = prompts.numpy()
    logits, keys, values = run(sess, ids, empty_past(cfg, len(ids)), empty_past(cfg, len(ids)))
    worst = _difference(gpt(prompts), logits)
    sequence = prompts
    for _ in range(steps):
        token = torch.from_numpy(logits[:, -1:]).argmax(-1)  # (B, 1)
        sequence = torch.cat([sequence, token], 1)
        logits, keys, values = run(sess, token.numpy(), keys, values)
        worst = max(worst, _difference(gpt(sequence)[:, -1:], logits))
    return worst


def _difference(reference: torch.Tensor, logits: np.ndarray) -> float:
    p = torch.softmax(reference.float(), -1)
    q = torch.softmax(torch.from_numpy(logits).float(), -1)
    return float((p - q).abs().max())


def check_parity(gpt, path: Path, prompts: torch.Tensor, tolerance: float = PARITY_TOLERANCE) -> float:
    difference = parity(gpt, session(path), prompts)
    if not difference <= tolerance:  # NaN fails too
        raise UserError(
            f"{path}: the ONNX graph's next-token probabilities differ from PyTorch's by up to "
            f"{difference:.2e}, more than the {tolerance:g} allowed."
        )
    return difference


def greedy(sess, config, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding in ONNX Runtime with the pasts: the prompt once, then one position per token."""
    empty = empty_past(config)
    logits, keys, values = run(sess, np.array([prompt], np.int64), empty, empty)
    out = []
    for _ in range(new_tokens):
        token = int(logits[0, -1].argmax())
        out.append(token)
        if len(prompt) + len(out) >= config.block_size:
            break
        logits, keys, values = run(sess, np.array([[token]], np.int64), keys, values)
    return out


def bits_per_byte(sess, config, ids: list[int], text_bytes: int, window: int | None = None) -> float:
    """Bits per byte of a text (its token ids and its UTF-8 length) under the graph: the text read in
    windows of the context, each token predicted from the ones before it in its window."""
    window = window or config.block_size
    nats = 0.0
    for start in range(0, len(ids) - 1, window):
        chunk = np.array([ids[start : start + window + 1]], np.int64)
        if chunk.shape[1] < 2:
            break
        empty = empty_past(config)
        logits = run(sess, chunk[:, :-1], empty, empty)[0][0]  # (T, V)
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nats -= float(log_probs[np.arange(len(log_probs)), chunk[0, 1:]].sum())
    return nats / np.log(2) / text_bytes


def quantize_int8(source: Path, target: Path) -> None:
    """int8 weights (per channel), activations scaled at run time: ONNX Runtime's dynamic quantization."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
