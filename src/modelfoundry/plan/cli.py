"""`foundry plan train|finetune|serve|budget`: print each estimate with the formula behind it.

The lead mounts this with `app.add_typer(plan_app, name="plan")`; UserErrors propagate to the main CLI,
which prints them as one message and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelfoundry.errors import UserError
from modelfoundry.plan import estimate as est
from modelfoundry.plan.hardware import get_gpu
from modelfoundry.plan.models import (
    ModelSpec,
    get_model,
    model_from_config,
    model_from_params,
    model_from_run,
)

plan_app = typer.Typer(
    help="What a model costs to train, fine-tune and serve, with the formulas shown.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ModelOpt = Annotated[
    str | None, typer.Option("--model", help="a preset, e.g. llama3-8b, gpt3-175b, bert-base")
]
ParamsOpt = Annotated[float | None, typer.Option("--params", help="parameter count, e.g. 7e9")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="a Hugging Face config.json")]
RunOpt = Annotated[
    str | None, typer.Option("--run", help="a foundry run (id or folder): its exact parameter count")
]
TokensOpt = Annotated[float | None, typer.Option(help="training tokens; default 20 * N (Chinchilla-optimal)")]
GpuOpt = Annotated[str, typer.Option(help="h100, h200, a100-80gb, a100-40gb, l4, t4")]
GpusOpt = Annotated[str, typer.Option(help="GPU count, or a comma list to compare, e.g. 8,16,32")]
MfuOpt = Annotated[float, typer.Option(help="model FLOPs utilisation in (0, 1]")]
PriceOpt = Annotated[float | None, typer.Option(help="USD per GPU-hour; default: the GPU's assumed rate")]
ShardingOpt = Annotated[str, typer.Option(help="none, zero1, zero2, zero3 or fsdp")]
OptimizerOpt = Annotated[str, typer.Option(help="adamw, sgd or adam8bit")]
SeqLenOpt = Annotated[int | None, typer.Option(help="sequence length, to estimate activation memory")]
MicroBatchOpt = Annotated[int, typer.Option(help="sequences per GPU per step, for activation memory")]
RecomputeOpt = Annotated[bool, typer.Option(help="full activation recomputation")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def resolve_model(
    model: str | None, params: float | None, config: Path | None, run: str | None = None
) -> ModelSpec:
    """Exactly one of --model, --params, --config, --run."""
    given = [
        name
        for name, value in (("--model", model), ("--params", params), ("--config", config), ("--run", run))
        if value is not None
    ]
    if len(given) != 1:
        raise UserError(
            f"give exactly one of --model, --params, --config or --run; got {', '.join(given) or 'none'}."
        )
    if model is not None:
        return get_model(model)
    if config is not None:
        return model_from_config(config)
    if run is not None:
        return model_from_run(run)
    return model_from_params(params)


def parse_gpus(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(
            f"--gpus must be a whole number or a comma list like 8,16,32; got '{text}'."
        ) from None
    if not counts or any(c <= 0 for c in counts):
        raise UserError(f"--gpus must be positive whole numbers; got '{text}'.")
    return counts


def training_plan(
    spec: ModelSpec,
    tokens: float | None,
    gpu_name: str,
    gpus: int,
    mfu: float,
    price: float | None,
    sharding: str,
    optimizer: str,
    seq_len: int | None,
    micro_batch: int,
    recompute: bool,
    method: str = "full",
    lora_rank: int = 16,
) -> dict[str, Any]:
    """Compute, time, money and per-GPU memory for training (method full) or fine-tuning (lora, qlora)."""
    gpu = get_gpu(gpu_name)
    est.check_choice("--method", method, est.METHODS)
    rows: dict[str, Any] = {}
    if tokens is None:
        rows.update(est.chinchilla_tokens(spec.params))
        tokens = rows["chinchilla_tokens"]["value"]
    adapters = 0.0
    if method != "full":
        rows.update(
            est.lora_params(spec.layers, spec.hidden, spec.heads, spec.kv_heads, spec.head_dim, lora_rank)
        )
        adapters = rows["lora_params"]["value"]
    # Frozen weights still need the backward pass through activations (2N) but not their own gradients (2N).
    rows.update(est.training_flops(spec.params, tokens, 6 if method == "full" else 4))
    rows.update(est.training_time(rows["training_flops"]["value"], gpu, gpus, mfu, price))
    rows.update(est.training_memory(spec.params, gpus, optimizer, sharding, method, adapters))
    memory = rows["states_gb"]["value"]
    if seq_len is not None:
        rows.update(
            est.activation_memory(spec.layers, spec.hidden, spec.heads, seq_len, micro_batch, recompute)
        )
        memory += rows["activations_gb"]["value"]
    rows["memory_per_gpu_gb"] = est.q(
        memory, "GB", "states_gb" + (" + activations_gb" if seq_len else " (add --seq-len for activations)")
    )
    usable = gpu.memory_gb * est.USABLE_MEMORY
    rows["fits"] = est.q(
        float(memory <= usable),
        "bool",
        f"memory_per_gpu <= {gpu.memory_gb:g} GB * {est.USABLE_MEMORY} usable",
    )
    hints = (
        []
        if memory <= usable
        else est.memory_hints(
            spec.params,
            gpus,
            usable,
            optimizer,
            sharding,
            method,
            adapters,
            rows["activations_gb"]["value"] if seq_len is not None else 0.0,
            recompute,
        )
    )
    return {
        "model": spec.as_dict(),
        "gpu": gpu.name,
        "gpus": gpus,
        "mfu": mfu,
        "mfu_source": est.MFU_SOURCE,
        "tokens": tokens,
        "method": method,
        "sharding": sharding,
        "optimizer": optimizer,
        "estimates": rows,
        "hints": hints,
    }


def _format(value: float, unit: str) -> str:
    if unit == "bool":
        return "yes" if value else "NO"
    if unit == "USD":
        return f"${value:,.2f}"
    if unit in ("GB", "days", "GPU-h", "tokens/s"):
        return f"{value:,.2f} {unit}"
    if unit in ("GPUs", "bytes"):
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def show(plans: list[dict[str, Any]], as_json: bool) -> None:
    """Print plans as rich tables (quantity, value, formula), or as JSON."""
    if as_json:
        typer.echo(json.dumps(plans if len(plans) > 1 else plans[0], indent=2))
        return
    console = Console(width=None if sys.stdout.isatty() else 200)
    for plan in plans:
        title = ", ".join(
            f"{k}={plan[k]}" for k in ("gpu", "gpus", "method", "sharding", "dtype") if k in plan
        )
        name = plan.get("model", {}).get("name", "")
        table = Table(title=f"{name} {title}".strip())
        for column in ("quantity", "value", "formula"):
            table.add_column(column, overflow="fold")
        for key, row in plan["estimates"].items():
            table.add_row(
                key, _format(row["value"], row["unit"]), escape(row["formula"])
            )  # sources hold [...]
        console.print(table)
        if plan.get("hints"):
            console.print(
                f"Does not fit on {plan['gpus']} x {plan['gpu']}. What would help:", highlight=False
            )
            for hint in plan["hints"]:
                console.print(f"  - {hint}", highlight=False)
        if "mfu_source" in plan:
            console.print(f"MFU {plan['mfu']:g}: {plan['mfu_source']}")


@plan_app.command()
def train(
    model: ModelOpt = None,
    params: ParamsOpt = None,
    config: ConfigOpt = None,
    run: RunOpt = None,
    tokens: TokensOpt = None,
    gpu: GpuOpt = "h100",
    gpus: GpusOpt = "8",
    mfu: MfuOpt = est.DEFAULT_MFU,
    price: PriceOpt = None,
    sharding: ShardingOpt = "none",
    optimizer: OptimizerOpt = "adamw",
    seq_len: SeqLenOpt = None,
    micro_batch: MicroBatchOpt = 1,
    recompute: RecomputeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Pre-training: FLOPs = 6 N D, time, cost, per-GPU memory."""
    spec = resolve_model(model, params, config, run)
    show(
        [
            training_plan(
                spec, tokens, gpu, count, mfu, price, sharding, optimizer, seq_len, micro_batch, recompute
            )
            for count in parse_gpus(gpus)
        ],
        as_json,
    )


@plan_app.command()
def finetune(
    model: ModelOpt = None,
    params: ParamsOpt = None,
    config: ConfigOpt = None,
    run: RunOpt = None,
    tokens: TokensOpt = None,
    method: Annotated[str, typer.Option(help="full, lora or qlora")] = "lora",
    lora_rank: Annotated[int, typer.Option(help="LoRA rank r")] = 16,
    gpu: GpuOpt = "h100",
    gpus: GpusOpt = "1",
    mfu: MfuOpt = est.DEFAULT_MFU,
    price: PriceOpt = None,
    sharding: ShardingOpt = "none",
    optimizer: OptimizerOpt = "adamw",
    seq_len: SeqLenOpt = None,
    micro_batch: MicroBatchOpt = 1,
    recompute: RecomputeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tuning (full, LoRA or QLoRA): FLOPs, time, cost, per-GPU memory."""
    spec = resolve_model(model, params, config, run)
    if tokens is None:
        raise UserError("finetune needs --tokens (the fine-tuning data size, e.g. 1e8).")
    show(
        [
            training_plan(
                spec,
                tokens,
                gpu,
                count,
                mfu,
                price,
                sharding,
                optimizer,
                seq_len,
                micro_batch,
                recompute,
                method,
                lora_rank,
            )
            for count in parse_gpus(gpus)
        ],
        as_json,
    )


@plan_app.command()
def serve(
    model: ModelOpt = None,
    params: ParamsOpt = None,
    config: ConfigOpt = None,
    run: Annotated[
        str | None,
        typer.Option("--run", help="a foundry GPT run (id or folder): its exact shape and context"),
    ] = None,
    gpu: GpuOpt = "h100",
    gpus: Annotated[int | None, typer.Option(help="GPU count; default: the fewest that fit")] = None,
    batch: Annotated[int, typer.Option(help="concurrent sequences")] = 1,
    context: Annotated[
        int | None,
        typer.Option(help="tokens per sequence (prompt + output); default: a run's own, else 4096"),
    ] = None,
    dtype: Annotated[str, typer.Option(help="weight dtype: fp16, int8 or int4")] = "fp16",
    mfu: MfuOpt = est.DEFAULT_MFU,
    price: PriceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Serving: weights + KV cache memory, FLOPs per token, GPUs needed, decode tokens/s and cost per 1M
    tokens."""
    spec = resolve_model(model, params, config, run)
    context = context or spec.context or 4096
    rows = est.serving(
        spec.params,
        spec.layers,
        spec.kv_heads,
        spec.head_dim,
        get_gpu(gpu),
        context,
        batch,
        dtype,
        gpus,
        mfu,
        price,
        spec.hidden,
    )
    show(
        [
            {
                "model": spec.as_dict(),
                "gpu": gpu,
                "gpus": int(gpus or rows["min_gpus"]["value"]),
                "dtype": dtype,
                "batch": batch,
                "context": context,
                "estimates": rows,
            }
        ],
        as_json,
    )


@plan_app.command()
def budget(
    dollars: Annotated[float, typer.Option(help="USD to spend on training compute")],
    gpu: GpuOpt = "h100",
    price: PriceOpt = None,
    mfu: MfuOpt = est.DEFAULT_MFU,
    as_json: JsonOpt = False,
) -> None:
    """Dollars -> GPU-hours -> FLOPs -> the Chinchilla-optimal model size and tokens."""
    rows = est.budget(dollars, get_gpu(gpu), price, mfu)
    show(
        [{"gpu": gpu, "dollars": dollars, "mfu": mfu, "mfu_source": est.MFU_SOURCE, "estimates": rows}],
        as_json,
    )


@plan_app.command()
def calibrate(as_json: JsonOpt = False) -> None:
    """Measure this machine (matmul rate, memory bandwidth, training MFU) for plans with --gpu cpu."""
    from modelfoundry.plan import calibrate as calibration

    console = Console(width=None if sys.stdout.isatty() else 200)
    result = calibration.measure()
    path = calibration.save(result)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("measured", "value")
    table.add_row("fp32 matmul", f"{result['matmul_fp32_flops'] / 1e9:,.1f} GFLOP/s")
    table.add_row("memory bandwidth (copy)", f"{result['bandwidth_bytes_s'] / 1e9:,.1f} GB/s")
    table.add_row("MLP training", f"{result['train_flops'] / 1e9:,.1f} GFLOP/s = MFU {result['mfu']:.2f}")
    table.add_row(
        "training loop (foundry fit)",
        f"{result['step_seconds'] * 1e3:,.2f} ms per step + "
        f"{result['module_step_seconds'] * 1e3:,.3f} ms per module per step + "
        f"{result['epoch_seconds'] * 1e3:,.1f} ms per epoch",
    )
    table.add_row(
        "machine", f"{result['processor']}, {result['threads']} torch threads, {result['memory_gb']:.0f} GB"
    )
    console.print(table)
    console.print(
        f"saved to {path}; plans use it with --gpu cpu (pass --mfu {result['mfu']:.2f} for small models)"
    )
