"""The planner's arithmetic: pure functions, each number returned with the formula behind it.

Every function returns {name: {"value": float, "unit": str, "formula": str}} so the CLI can show
and a reader can check each step. Units: FLOP, s, GB (1e9 bytes), bytes, tokens/s, USD.
"""

from __future__ import annotations

import math
from typing import Any

from modelfoundry.errors import UserError, did_you_mean
from modelfoundry.plan.hardware import GPU

Quantity = dict[str, Any]

DEFAULT_MFU = 0.4
MFU_SOURCE = "assumed 0.40 (PaLM, Chowdhery et al. 2022, reports 46% MFU training 540B on TPU v4)"
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022: compute-optimal D ~= 20 N
USABLE_MEMORY = 0.9  # the rest goes to the CUDA context, allocator fragmentation and workspace
MAX_GPUS = 64

# Bytes per parameter for weights, gradients and optimizer states (ZeRO paper, Rajbhandari et al. 2020):
# 16-bit weights and grads, an fp32 master copy, and the optimizer's moments.
OPTIMIZERS = {
    "adamw": {"weights": 2, "grads": 2, "optimizer": 4 + 4 + 4, "why": "fp32 master 4 + Adam m 4 + v 4"},
    "sgd": {"weights": 2, "grads": 2, "optimizer": 4 + 4, "why": "fp32 master 4 + momentum 4"},
    "adam8bit": {"weights": 2, "grads": 2, "optimizer": 4 + 1 + 1, "why": "fp32 master 4 + 8-bit m 1 + v 1"},
}
# Which of weights/grads/optimizer states each sharding strategy splits across the G data-parallel GPUs.
SHARDING = {
    "none": (),
    "zero1": ("optimizer",),
    "zero2": ("optimizer", "grads"),
    "zero3": ("optimizer", "grads", "weights"),
    "fsdp": ("optimizer", "grads", "weights"),
}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}
METHODS = ("full", "lora", "qlora")


def q(value: float, unit: str, formula: str) -> Quantity:
    return {"value": value, "unit": unit, "formula": formula}


def check_positive(option: str, value: float | None) -> None:
    """Raise a UserError naming `option` unless value is a positive finite number (None is allowed)."""
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UserError(f"{option} must be a positive number; got {value}.")


def check_mfu(mfu: float) -> None:
    if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
        raise UserError(
            f"--mfu must be a fraction in (0, 1]; got {mfu}. Large training runs reach 0.3-0.5 "
            f"(PaLM reports 0.46); the default is {DEFAULT_MFU}."
        )


def check_choice(option: str, value: str, choices) -> None:
    if value not in choices:
        raise UserError(
            f"{option} '{value}' is not one of {', '.join(choices)}." + did_you_mean(value, choices)
        )


def training_flops(params: float, tokens: float, flops_per_param_token: int = 6) -> dict[str, Quantity]:
    """Training compute C = 6 N D (2 forward + 4 backward per parameter per token; Kaplan et al. 2020)."""
    check_positive("--params", params)
    check_positive("--tokens", tokens)
    k = flops_per_param_token
    why = "" if k == 6 else " (frozen base: no weight gradients)"
    return {
        "training_flops": q(
            k * params * tokens, "FLOP", f"{k} * N * D = {k} * {params:.3g} * {tokens:.3g}{why}"
        )
    }


def inference_flops_per_token(
    params: float, layers: int = 0, context: int = 0, hidden: int = 0
) -> dict[str, Quantity]:
    """Forward compute per token: 2 N, plus attention over the context 2 * layers * context * d_model."""
    check_positive("--params", params)
    attention = 2 * layers * context * hidden
    formula = f"2 * N = 2 * {params:.3g}"
    if attention:
        formula += f" + 2 * layers * context * d_model = 2 * {layers} * {context} * {hidden}"
    return {"inference_flops_per_token": q(2 * params + attention, "FLOP", formula)}


def training_time(
    flops: float,
    gpu: GPU,
    gpus: int,
    mfu: float = DEFAULT_MFU,
    price: float | None = None,
    dtype: str | None = None,
) -> dict[str, Quantity]:
    """Wall time, GPU-hours and cost of `flops` on `gpus` x `gpu` at model FLOPs utilisation `mfu`."""
    check_positive("--gpus", gpus)
    check_mfu(mfu)
    check_positive("--price", price)
    dtype = dtype or gpu.half_precision
    peak = gpu.peak_flops(dtype)
    seconds = flops / (gpus * peak * mfu)
    out = {
        "time_seconds": q(
            seconds,
            "s",
            f"C / (gpus * peak * MFU) = {flops:.3g} / ({gpus} * {peak:.3g} {dtype} [{gpu.source}] * {mfu:g})",
        ),
        "time_days": q(seconds / 86400, "days", "time_seconds / 86400"),
    }
    out.update(money(seconds * gpus / 3600, gpu, price))
    return out


def time_from_throughput(tokens: float, tokens_per_second_per_gpu: float, gpus: int) -> dict[str, Quantity]:
    """Wall time from a measured training throughput (tokens/s per GPU), as papers report it."""
    check_positive("--tokens", tokens)
    check_positive("tokens per second per GPU", tokens_per_second_per_gpu)
    check_positive("--gpus", gpus)
    seconds = tokens / (tokens_per_second_per_gpu * gpus)
    return {
        "time_seconds": q(
            seconds,
            "s",
            f"D / (tokens/s/GPU * gpus) = {tokens:.3g} / ({tokens_per_second_per_gpu:g} * {gpus})",
        ),
        "time_days": q(seconds / 86400, "days", "time_seconds / 86400"),
    }


def money(gpu_hours: float, gpu: GPU, price: float | None = None) -> dict[str, Quantity]:
    """GPU-hours and their cost; price defaults to the GPU's assumed on-demand rate."""
    check_positive("--price", price)
    rate = price if price is not None else gpu.price_per_hour
    where = "--price" if price is not None else f"assumed {gpu.name} rate"
    return {
        "gpu_hours": q(gpu_hours, "GPU-h", "time_seconds * gpus / 3600"),
        "cost_usd": q(gpu_hours * rate, "USD", f"GPU-hours * price = {gpu_hours:.4g} * {rate:g} ({where})"),
    }


def training_memory(
    params: float,
    gpus: int = 1,
    optimizer: str = "adamw",
    sharding: str = "none",
    method: str = "full",
    lora_params: float = 0.0,
    base_dtype: str = "bf16",
) -> dict[str, Quantity]:
    """Per-GPU memory for weights, gradients and optimizer states (ZeRO-paper accounting).

    Full training keeps everything per parameter (adamw: 2 + 2 + 12 = 16 bytes). LoRA freezes the base
    at `base_dtype` and trains `lora_params` adapters at the full rate; QLoRA stores the base at 4 bits.
    """
    check_choice("--optimizer", optimizer, OPTIMIZERS)
    check_choice("--sharding", sharding, SHARDING)
    check_choice("--method", method, METHODS)
    check_positive("--params", params)
    check_positive("--gpus", gpus)
    rates = OPTIMIZERS[optimizer]
    if method == "full":
        trained, base_bytes, base_note = params, 0.0, ""
    else:
        trained = lora_params
        base_dtype = "int4" if method == "qlora" else base_dtype
        base_bytes = params * DTYPE_BYTES[base_dtype]
        base_note = f"frozen base N * {DTYPE_BYTES[base_dtype]:g} ({base_dtype}) + "
    parts = {
        "weights": (
            base_bytes + trained * rates["weights"],
            f"{base_note}{rates['weights']} * trained params",
        ),
        "grads": (trained * rates["grads"], f"{rates['grads']} * trained params"),
        "optimizer": (
            trained * rates["optimizer"],
            f"{rates['optimizer']} * trained params ({rates['why']})",
        ),
    }
    out: dict[str, Quantity] = {}
    total = 0.0
    for name, (nbytes, formula) in parts.items():
        if name in SHARDING[sharding]:
            nbytes, formula = nbytes / gpus, f"({formula}) / {gpus} GPUs ({sharding})"
        out[f"{name}_gb"] = q(nbytes / 1e9, "GB", formula)
        total += nbytes
    out["states_gb"] = q(total / 1e9, "GB", "weights + grads + optimizer, per GPU")
    if method != "full":
        out["trained_params"] = q(trained, "params", "LoRA adapters on q, k, v, o of every layer")
    return out


def memory_hints(
    params: float,
    gpus: int,
    usable_gb: float,
    optimizer: str,
    sharding: str,
    method: str,
    adapters: float,
    activations_gb: float,
    recompute: bool,
) -> list[str]:
    """For a training plan that does not fit: the changes that make it fit, cheapest first.

    Sharding only divides the states (weights, gradients, optimizer) by the GPU count; the activations
    of each GPU's micro-batch stay whole, so they can only shrink by recomputation or a smaller micro-batch.
    """

    def states_gb(how: str, count: int, opt: str = optimizer) -> float:
        rows = training_memory(params, count, opt, how, method, adapters)
        return rows["states_gb"]["value"]

    hints = []
    for how in ("zero1", "zero2", "zero3"):
        if list(SHARDING).index(how) > list(SHARDING).index(sharding if sharding != "fsdp" else "zero3"):
            total = states_gb(how, gpus) + activations_gb
            if total <= usable_gb:
                hints.append(
                    f"--sharding {how} fits on these {gpus} GPUs: {total:,.1f} GB per GPU "
                    f"(<= {usable_gb:,.1f} GB usable)."
                )
                break
    if not hints and activations_gb < usable_gb:
        room, full = usable_gb - activations_gb, states_gb("zero3", 1)
        fewest = math.ceil(full / room) if room > 0 else 0
        if fewest and states_gb("zero3", fewest) + activations_gb <= usable_gb:
            hints.append(
                f"--sharding zero3 (or fsdp) --gpus {fewest}: the states ({full:,.1f} GB in all) split "
                f"{fewest} ways leave room for {activations_gb:,.1f} GB of activations per GPU."
            )
    if activations_gb >= usable_gb * 0.5:  # the activations are the problem: say so before the states
        hints.append(
            f"activations are {activations_gb:,.1f} GB per GPU: "
            + (
                "lower --micro-batch or --seq-len."
                if recompute
                else "--recompute (full activation recomputation) or a lower --micro-batch shrinks them."
            )
        )
    if optimizer == "adamw" and method == "full":
        saved = states_gb(sharding, gpus) - states_gb(sharding, gpus, "adam8bit")
        hints.append(f"--optimizer adam8bit saves {saved:,.1f} GB per GPU (8-bit Adam moments).")
    if method == "full":
        hints.append("--method lora or qlora (foundry plan finetune) trains adapters only.")
    return hints


def lora_params(
    layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, rank: int
) -> dict[str, Quantity]:
    """LoRA adapter count on attention q, k, v, o: rank * (d_in + d_out) per matrix (A: d_in x r,
    B: r x d_out)."""
    check_positive("--lora-rank", rank)
    if not layers:
        raise UserError(
            "--method lora/qlora needs the model's shape; pass --model or --config instead of --params."
        )
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    per_layer = rank * ((hidden + q_dim) + 2 * (hidden + kv_dim) + (q_dim + hidden))
    return {
        "lora_params": q(
            layers * per_layer,
            "params",
            f"layers * r * [(d + d_q) + 2 * (d + d_kv) + (d_q + d)] = {layers} * {rank} * "
            f"[({hidden}+{q_dim}) + 2*({hidden}+{kv_dim}) + ({q_dim}+{hidden})]",
        )
    }


def activation_memory(
    layers: int, hidden: int, heads: int, seq_len: int, micro_batch: int, recompute: bool = False
) -> dict[str, Quantity]:
    """Activation memory per GPU in 16-bit (Korthikanti et al. 2022, no tensor/sequence parallelism).

    Without recomputation each layer stores 34 s b h + 5 a s^2 b bytes; with full recomputation only
    its input, 2 s b h bytes.
    """
    check_positive("--seq-len", seq_len)
    check_positive("--micro-batch", micro_batch)
    if not layers:
        raise UserError(
            "activation memory needs the model's shape; pass --model or --config instead of --params."
        )
    s, b, h, a = seq_len, micro_batch, hidden, heads
    if recompute:
        per_layer, formula = (
            2 * s * b * h,
            f"layers * 2 s b h = {layers} * 2 * {s} * {b} * {h} (full recomputation)",
        )
    else:
        per_layer = 34 * s * b * h + 5 * a * s * s * b
        formula = f"layers * (34 s b h + 5 a s^2 b) = {layers} * (34*{s}*{b}*{h} + 5*{a}*{s}^2*{b})"
    return {"activations_gb": q(layers * per_layer / 1e9, "GB", formula)}


def kv_cache(
    layers: int, kv_heads: int, head_dim: int, context: int, batch: int, dtype: str = "fp16"
) -> dict[str, Quantity]:
    """KV cache: 2 (K and V) * layers * kv_heads * head_dim * bytes per token, times context * batch."""
    check_positive("--context", context)
    check_positive("--batch", batch)
    nbytes = DTYPE_BYTES[dtype]
    per_token = 2 * layers * kv_heads * head_dim * nbytes
    return {
        "kv_bytes_per_token": q(
            per_token,
            "bytes",
            f"2 * layers * kv_heads * head_dim * bytes = 2 * {layers} * "
            f"{kv_heads} * {head_dim} * {nbytes:g} ({dtype})",
        ),
        "kv_cache_gb": q(
            per_token * context * batch / 1e9,
            "GB",
            f"kv_bytes_per_token * context * batch = {per_token:g} * {context} * {batch}",
        ),
    }


def serving(
    params: float,
    layers: int,
    kv_heads: int,
    head_dim: int,
    gpu: GPU,
    context: int,
    batch: int = 1,
    dtype: str = "fp16",
    gpus: int | None = None,
    mfu: float = DEFAULT_MFU,
    price: float | None = None,
    hidden: int = 0,
) -> dict[str, Quantity]:
    """Memory to serve, the fewest GPUs that hold it, and decode throughput (memory- vs compute-bound).

    Each decode step reads every weight once and the whole KV cache, and produces one token per sequence.
    """
    check_choice("--dtype", dtype, ("fp16", "int8", "int4"))
    check_positive("--params", params)
    check_mfu(mfu)
    if not layers:
        raise UserError(
            "serve needs the model's shape for the KV cache; pass --model or --config, not --params."
        )
    weights = params * DTYPE_BYTES[dtype]
    out = {
        "weights_gb": q(weights / 1e9, "GB", f"N * bytes = {params:.3g} * {DTYPE_BYTES[dtype]:g} ({dtype})")
    }
    out.update(kv_cache(layers, kv_heads, head_dim, context, batch))
    kv = out["kv_cache_gb"]["value"] * 1e9
    total = weights + kv
    usable = gpu.memory_gb * 1e9 * USABLE_MEMORY
    needed = math.ceil(total / usable)
    if needed > MAX_GPUS:
        raise UserError(
            f"serve: {params:.3g} params at {dtype} with context {context} x batch {batch} needs "
            f"{total / 1e9:,.0f} GB (weights {weights / 1e9:,.0f} GB + KV cache {kv / 1e9:,.0f} GB), more "
            f"than {MAX_GPUS} x {gpu.name} hold ({MAX_GPUS} * {gpu.memory_gb:g} GB * {USABLE_MEMORY} usable "
            f"= {MAX_GPUS * usable / 1e9:,.0f} GB). Lower --context or --batch, use --dtype int8/int4, or "
            "choose a larger --gpu."
        )
    out["memory_gb"] = q(total / 1e9, "GB", "weights_gb + kv_cache_gb")
    out["min_gpus"] = q(needed, "GPUs", f"ceil(memory / ({gpu.memory_gb:g} GB * {USABLE_MEMORY} usable))")
    check_positive("--gpus", gpus)
    gpus = gpus or needed
    out["fits"] = q(float(gpus >= needed), "bool", f"{gpus} GPUs >= min_gpus {needed}")
    bandwidth = gpu.bandwidth_tb_s * 1e12 * gpus
    memory_bound = bandwidth / total * batch
    out["decode_memory_bound_tokens_s"] = q(
        memory_bound,
        "tokens/s",
        f"gpus * bandwidth / (weight + KV bytes) * "
        f"batch = {gpus} * {gpu.bandwidth_tb_s:g}e12 / {total:.3g} * {batch}",
    )
    # int8 weights can run int8 matmuls; int4 weights are dequantized to 16-bit for the matmul.
    compute_dtype = "int8" if dtype == "int8" else gpu.half_precision
    peak = gpu.peak_flops(compute_dtype)
    out.update(inference_flops_per_token(params, layers, context, hidden))
    per_token = out["inference_flops_per_token"]["value"]
    compute_bound = gpus * peak * mfu / per_token
    out["decode_compute_bound_tokens_s"] = q(
        compute_bound,
        "tokens/s",
        f"gpus * peak * MFU / FLOPs per token = "
        f"{gpus} * {peak:.3g} ({compute_dtype}) * {mfu:g} / {per_token:.3g}",
    )
    binding = "memory" if memory_bound <= compute_bound else "compute"
    rate = min(memory_bound, compute_bound)
    out["decode_tokens_s"] = q(rate, "tokens/s", f"min of the two: {binding}-bound")
    out.update(money(gpus * 1e6 / rate / 3600, gpu, price))
    out["gpu_hours"]["formula"] = "GPU-hours per 1M generated tokens = gpus * 1e6 / decode_tokens_s / 3600"
    out["cost_usd"]["formula"] += " per 1M generated tokens"
    return out


def chinchilla_tokens(params: float) -> dict[str, Quantity]:
    """Compute-optimal training tokens, D = 20 N (Hoffmann et al. 2022)."""
    check_positive("--params", params)
    return {
        "chinchilla_tokens": q(CHINCHILLA_TOKENS_PER_PARAM * params, "tokens", f"20 * N = 20 * {params:.3g}")
    }


def budget(
    dollars: float, gpu: GPU, price: float | None = None, mfu: float = DEFAULT_MFU
) -> dict[str, Quantity]:
    """Dollars -> GPU-hours -> FLOPs -> the Chinchilla-optimal model: N = sqrt(C / (6 * 20)), D = 20 N."""
    check_positive("--dollars", dollars)
    check_positive("--price", price)
    check_mfu(mfu)
    rate = price if price is not None else gpu.price_per_hour
    gpu_hours = dollars / rate
    peak = gpu.peak_flops(gpu.half_precision)
    flops = gpu_hours * 3600 * peak * mfu
    params = math.sqrt(flops / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    return {
        "gpu_hours": q(gpu_hours, "GPU-h", f"dollars / price = {dollars:g} / {rate:g}"),
        "training_flops": q(
            flops, "FLOP", f"GPU-hours * 3600 * peak * MFU = {gpu_hours:.4g} * 3600 * {peak:.3g} * {mfu:g}"
        ),
        "optimal_params": q(params, "params", f"sqrt(C / (6 * 20)) = sqrt({flops:.3g} / 120)"),
        "optimal_tokens": q(CHINCHILLA_TOKENS_PER_PARAM * params, "tokens", "20 * N (Hoffmann et al. 2022)"),
    }
