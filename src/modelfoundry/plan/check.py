"""The planner checked against reality: each `foundry train` run records the time the plan
predicts for it beside the time it took.

predicted seconds = training FLOPs / rate
    + epochs * (steps per epoch * (step_seconds + modules * module_step_seconds) + epoch_seconds)

Training FLOPs are counted on the real model with PyTorch's FlopCounterMode (matmuls and
convolutions of one forward pass), times 3 for forward + backward, times the examples seen;
validation adds one forward pass per example. The rate is this machine's calibrated one
(`foundry plan calibrate`): fp32 matmul peak x the MFU its short training run reached. The
second term is the training loop's fixed cost per step, per module (leaf modules of the model:
Linear, Conv2d, ReLU, ...) and per epoch, also calibrated: it is what small models spend their time on.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from modelfoundry.errors import UserError

aten = torch.ops.aten
# FlopCounterMode has no formula for the CPU flash-attention kernels that scaled_dot_product_attention
# dispatches to, so it would count attention as zero; these reuse its own formulas for the GPU kernels.
SDPA_CPU_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *args, out_shape=None, **kwargs: (
        flop_counter.sdpa_flop_count(q, k, v)
    ),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_backward_flop_count(
            grad, q, k, v
        )
    ),
}


def forward_flops_per_example(model: torch.nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward pass per example, counted on a batch of two (BatchNorm needs > 1)."""
    batch = example[:1].expand(2, *example.shape[1:]).clone()
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS) as counter:
        model(batch)
    model.train(was_training)
    return counter.get_total_flops() / 2


def plan_vs_measured(
    model: torch.nn.Module,
    example: torch.Tensor,
    train_examples: int,
    val_examples: int,
    epochs: int,
    measured_seconds: float,
    steps_per_epoch: int = 0,
) -> dict:
    """The plan for a finished run and how far off it was; `predicted_seconds` is None without calibration.
    A calibration from before the loop overheads were measured predicts from FLOPs alone."""
    from modelfoundry.plan import calibrate

    per_example = forward_flops_per_example(model, example.cpu())
    flops = epochs * (3 * per_example * train_examples + per_example * val_examples)
    out = {
        "forward_flops_per_example": per_example,
        "training_flops": flops,
        "formula": "epochs * (3 * forward FLOPs * train examples + forward FLOPs * val examples)",
        "measured_seconds": measured_seconds,
        "predicted_seconds": None,
    }
    try:
        measured = calibrate.load()
    except UserError as exc:  # no or damaged calibration: the run still finishes, the record says why
        out["note"] = str(exc)
        return out
    rate = measured["matmul_fp32_flops"] * measured["mfu"]
    compute = flops / rate
    modules = calibrate.leaf_modules(model)
    step = measured.get("step_seconds", 0.0) + modules * measured.get("module_step_seconds", 0.0)
    overhead = epochs * (steps_per_epoch * step + measured.get("epoch_seconds", 0.0))
    predicted = compute + overhead
    out.update(
        predicted_seconds=predicted,
        compute_seconds=compute,
        overhead_seconds=overhead,
        steps_per_epoch=steps_per_epoch,
        modules=modules,
        rate_flops=rate,
        rate_source=f"calibrated {measured['measured']}",
        predicted_formula="training_flops / rate + epochs * (steps_per_epoch * (step_seconds + modules * "
        "module_step_seconds) + epoch_seconds)",
        predicted_over_measured=predicted / measured_seconds if measured_seconds else None,
    )
    return out
