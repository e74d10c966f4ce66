"""`foundry plan calibrate`: measure this machine, so plans for `--gpu cpu` use real rates.

Stored as JSON in the runs folder (`$FOUNDRY_HOME/calibration.json`, default runs/), beside the
registry. Measured: the fp32 matmul rate (the peak a plan divides by), the memory bandwidth of a
large copy, the FLOP rate a short training run of an MLP reaches, whose ratio to the matmul
rate is this machine's model FLOPs utilisation (MFU) for small models, and the fixed costs of
foundry's own training loop (seconds per step and per epoch, timed through `fit` on a model so
small that its arithmetic is negligible), which dominate the time of small models.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from datetime import datetime
from pathlib import Path

from modelfoundry.errors import UserError
from modelfoundry.runfiles import atomic_write_json, runs_root

REQUIRED = ("matmul_fp32_flops", "bandwidth_bytes_s", "train_flops", "mfu", "memory_gb")
LOOP = ("step_seconds", "module_step_seconds", "epoch_seconds")


def calibration_path() -> Path:
    return runs_root() / "calibration.json"


def _best_seconds(work, repeats: int) -> float:
    work()  # warm-up: first calls create kernels and allocate
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def measure(size: int = 1024, repeats: int = 5) -> dict:
    """Time a (size x size) fp32 matmul, a 256 MB copy and MLP training steps on this machine."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    matmul = 2 * size**3 / _best_seconds(lambda: a @ b, repeats)
    source = torch.empty(32 * 2**20, dtype=torch.float64)  # 256 MB, far beyond any cache
    target = torch.empty_like(source)
    bandwidth = 2 * source.nbytes / _best_seconds(lambda: target.copy_(source), repeats)  # read + write

    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512))
    optimizer = torch.optim.AdamW(model.parameters())
    inputs, batch = torch.randn(256, 512), 256
    params = sum(p.numel() for p in model.parameters())

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(inputs).square().mean().backward()
        optimizer.step()

    train = (
        6 * params * batch / _best_seconds(step, repeats)
    )  # forward 2 + backward 4 FLOPs per parameter and example
    return {
        **loop_overheads(),
        "matmul_fp32_flops": matmul,
        "bandwidth_bytes_s": bandwidth,
        "train_flops": train,
        "mfu": train / matmul,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "memory_gb": _memory_gb(),
        "measured": datetime.now().isoformat(timespec="seconds"),
    }


def loop_overheads(batch_size: int = 8, small: int = 4, large: int = 64, epochs: int = 4) -> dict:
    """Seconds of `fit` itself per training step, per module and per epoch, on MLPs of width 4 whose
    arithmetic is negligible. Runs that differ only in steps per epoch give the cost of a step (the
    slope) and the rest of an epoch (validation, bookkeeping: the intercept); a shallow and a deep MLP
    split the step into a fixed part and a part per module (module calls, autograd nodes, optimizer
    updates). Each timing is the fastest epoch after the first."""
    import torch
    from rich.console import Console

    from modelfoundry.config import TrainConfig
    from modelfoundry.data.prepare import ArrayData
    from modelfoundry.training.loop import fit

    generator = torch.Generator().manual_seed(0)

    def epoch_seconds(steps: int, blocks: int) -> float:
        model = torch.nn.Sequential(
            *[m for _ in range(blocks) for m in (torch.nn.Linear(4, 4), torch.nn.ReLU())],
            torch.nn.Linear(4, 2),
        )
        train = ArrayData(
            torch.randn(steps * batch_size, 4, generator=generator), torch.arange(steps * batch_size) % 2
        )
        val = ArrayData(torch.randn(2 * batch_size, 4, generator=generator), torch.arange(2 * batch_size) % 2)
        with tempfile.TemporaryDirectory(
            prefix="foundry-calibrate-"
        ) as scratch:  # as a run: checkpoints, events
            result = fit(
                model,
                train,
                val,
                TrainConfig(epochs=epochs, batch_size=batch_size, precision="fp32"),
                device=torch.device("cpu"),
                checkpoint_dir=Path(scratch),
                log_dir=Path(scratch) / "tb",
                console=Console(quiet=True),
            )
        return min(record["seconds"] for record in result.history[1:])

    shallow, deep = 1, 7
    short = epoch_seconds(small, shallow)
    step_shallow = max((epoch_seconds(large, shallow) - short) / (large - small), 0.0)
    step_deep = max((epoch_seconds(large, deep) - epoch_seconds(small, deep)) / (large - small), 0.0)
    modules = {depth: 2 * depth + 1 for depth in (shallow, deep)}  # Linear + ReLU per block, and the head
    per_module = max((step_deep - step_shallow) / (modules[deep] - modules[shallow]), 0.0)
    step = max(step_shallow - per_module * modules[shallow], 0.0)
    return {
        "step_seconds": step,
        "module_step_seconds": per_module,
        "epoch_seconds": max(short - small * step_shallow, 0.0),
    }


def leaf_modules(model) -> int:
    """Modules without children (Linear, Conv2d, ReLU, ...): each is a call forward and a node backward."""
    return sum(1 for m in model.modules() if next(m.children(), None) is None)


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


def save(result: dict) -> Path:
    path = calibration_path()
    atomic_write_json(path, result)
    return path


def load() -> dict:
    path = calibration_path()
    if not path.is_file():
        raise UserError(
            f"--gpu cpu needs this machine's measured rates and {path} does not exist. "
            "Run `foundry plan calibrate` first (about ten seconds)."
        )
    try:
        measured = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: not valid JSON ({exc}). Run `foundry plan calibrate` again to rewrite it."
        ) from None
    if not isinstance(measured, dict):
        measured = {}
    missing = [
        key for key in REQUIRED if not isinstance(measured.get(key), (int, float)) or measured[key] <= 0
    ]
    # the loop's costs: absent in a calibration from before they were measured (then counted as 0), never
    # negative
    missing += [
        key
        for key in LOOP
        if key in measured and (not isinstance(measured[key], (int, float)) or measured[key] < 0)
    ]
    if missing:
        raise UserError(
            f"{path}: missing or out-of-range {', '.join(missing)}. "
            "Run `foundry plan calibrate` again to rewrite it."
        )
    return measured
