"""`foundry plan calibrate`: measure this machine, so plans for `--gpu cpu` use real rates.

Stored as JSON in the runs folder (`$FOUNDRY_HOME/calibration.json`, default runs/), beside the
registry. Measured: the fp32 matmul rate (the peak a plan divides by), the memory bandwidth of a
large copy, and the FLOP rate a short training run of an MLP reaches, whose ratio to the matmul
rate is this machine's model FLOPs utilisation (MFU) for small models.
"""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path

from modelfoundry.errors import UserError
from modelfoundry.store.registry import runs_root


REQUIRED = ("matmul_fp32_flops", "bandwidth_bytes_s", "train_flops", "mfu", "memory_gb")


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
    matmul = 2 * size ** 3 / _best_seconds(lambda: a @ b, repeats)
    source = torch.empty(32 * 2 ** 20, dtype=torch.float64)  # 256 MB, far beyond any cache
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

    train = 6 * params * batch / _best_seconds(step, repeats)  # forward 2 + backward 4 FLOPs per parameter and example
    return {"matmul_fp32_flops": matmul, "bandwidth_bytes_s": bandwidth, "train_flops": train,
            "mfu": train / matmul, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "memory_gb": _memory_gb(), "measured": datetime.now().isoformat(timespec="seconds")}


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


def save(result: dict) -> Path:
    path = calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    return path


def load() -> dict:
    path = calibration_path()
    if not path.is_file():
        raise UserError(f"--gpu cpu needs this machine's measured rates and {path} does not exist. "
                        "Run `foundry plan calibrate` first (about ten seconds).")
    try:
        measured = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}). Run `foundry plan calibrate` again to rewrite it.") from None
    if not isinstance(measured, dict):
        measured = {}
    missing = [key for key in REQUIRED if not isinstance(measured.get(key), (int, float)) or measured[key] <= 0]
    if missing:
        raise UserError(f"{path}: missing or non-positive {', '.join(missing)}. "
                        "Run `foundry plan calibrate` again to rewrite it.")
    return measured
