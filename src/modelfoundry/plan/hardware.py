"""GPU presets as data: memory, bandwidth, dense peak throughput and an assumed price.

Peaks are the vendor's *dense* figures (datasheets often print 2x "with sparsity"). Memory is in
decimal GB as the datasheets give it. Prices are assumptions (typical on-demand cloud rates in
USD per GPU-hour); pass --price to use your own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelfoundry.errors import UserError, did_you_mean


@dataclass(frozen=True)
class GPU:
    """One accelerator.

    Attributes:
        name: preset name, e.g. "h100".
        memory_gb: device memory in GB (1e9 bytes).
        bandwidth_tb_s: memory bandwidth in TB/s (1e12 bytes/s).
        peak_tflops: dense peak TFLOP/s (or TOP/s for int8) by dtype: bf16, fp16, tf32, fp32, int8.
        price_per_hour: assumed USD per GPU-hour.
        source: where the numbers come from.
    """

    name: str
    memory_gb: float
    bandwidth_tb_s: float
    peak_tflops: dict[str, float] = field(default_factory=dict)
    price_per_hour: float = 0.0
    source: str = ""

    def peak_flops(self, dtype: str) -> float:
        """Dense peak in FLOP/s for `dtype`; bf16 falls back to fp16 on GPUs without bf16 (T4)."""
        if dtype == "bf16" and "bf16" not in self.peak_tflops:
            dtype = "fp16"
        if dtype == "fp16" and "fp16" not in self.peak_tflops:
            dtype = "bf16"
        if dtype not in self.peak_tflops:
            raise UserError(
                f"GPU '{self.name}' has no {dtype} peak; it has {', '.join(sorted(self.peak_tflops))}."
            )
        return self.peak_tflops[dtype] * 1e12

    @property
    def half_precision(self) -> str:
        """The 16-bit dtype mixed-precision training uses on this GPU."""
        if "bf16" in self.peak_tflops or "fp16" in self.peak_tflops:
            return "bf16" if "bf16" in self.peak_tflops else "fp16"
        return "fp32"  # a calibrated CPU: only its measured fp32 rate is known


_H100_COMPUTE = {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0, "int8": 1979.0}
_A100_COMPUTE = {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "int8": 624.0}

GPUS: dict[str, GPU] = {
    g.name: g
    for g in [
        GPU("h100", 80, 3.35, _H100_COMPUTE, 2.5, "NVIDIA H100 Tensor Core GPU datasheet (SXM5)"),
        GPU("h200", 141, 4.8, _H100_COMPUTE, 3.5, "NVIDIA H200 Tensor Core GPU datasheet (SXM)"),
        GPU("a100-40gb", 40, 1.555, _A100_COMPUTE, 1.3, "NVIDIA A100 Tensor Core GPU datasheet (40GB SXM)"),
        GPU("a100-80gb", 80, 2.039, _A100_COMPUTE, 1.8, "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM)"),
        GPU(
            "l4",
            24,
            0.300,
            {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3, "int8": 242.0},
            0.8,
            "NVIDIA L4 Tensor Core GPU datasheet",
        ),
        GPU(
            "t4",
            16,
            0.320,
            {"fp16": 65.0, "fp32": 8.1, "int8": 130.0},
            0.35,
            "NVIDIA T4 Tensor Core GPU datasheet",
        ),
    ]
}


def this_cpu() -> GPU:
    """This machine as a 'GPU' whose rates come from `foundry plan calibrate`."""
    from modelfoundry.plan import calibrate

    measured = calibrate.load()
    return GPU(
        "cpu",
        measured["memory_gb"],
        measured["bandwidth_bytes_s"] / 1e12,
        {"fp32": measured["matmul_fp32_flops"] / 1e12},
        0.0,
        f"measured by `foundry plan calibrate` on {measured['measured']} ({measured['processor']}, "
        f"{measured['threads']} threads; training MFU {measured['mfu']:.2f})",
    )


def get_gpu(name: str) -> GPU:
    """Look up a GPU preset by name (case-insensitive); 'cpu' is this machine, as calibrated."""
    if name.lower() == "cpu":
        return this_cpu()
    gpu = GPUS.get(name.lower())
    if gpu is None:
        raise UserError(
            f"--gpu '{name}' is not a known GPU; choose one of {', '.join(GPUS)}, or cpu (calibrated)."
            + did_you_mean(name, GPUS)
        )
    return gpu
