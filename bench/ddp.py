"""DDP scaling here (issue 7): samples/s of `foundry train` with 1 process and with `--nproc 2`
(gloo on CPU; nccl with one GPU per process where there are GPUs), the same config, seed and global
batch, side by side in one run.
Under DDP `train.batch_size` is per process, so the 2-process run is given half the config's.

Samples/s = training examples x epochs / the sum of the epochs' seconds (training + validation, as
recorded in metrics.json); scaling efficiency = (2-process samples/s) / (2 x 1-process samples/s).
On CPU the processes share the machine's cores: 1 process uses every core as torch threads, each of
2 processes half of them, so the question is whether data parallelism beats intra-op threading.

Run from the repo root on a quiet machine (a few minutes on 2 CPU cores):
    .venv/bin/python bench/ddp.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from record import write_section

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"digits cnn": "examples/digits.yaml", "mnist cnn": "examples/mnist.yaml"}


def run(config: str, nproc: int, overrides: list[str]) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"bench-ddp-{nproc}-"))
    command = [sys.executable, "-m", "modelfoundry", "train", str(REPO / config), *overrides]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "FOUNDRY_HOME": str(home)},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run_dir = next(p for p in home.iterdir() if p.is_dir() and not p.name.startswith("."))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    report = json.loads((run_dir / "data_report.json").read_text())
    seconds = sum(r["seconds"] for r in metrics["history"])
    samples = report["splits"]["train"] * len(metrics["history"])
    return {
        "samples_s": samples / seconds,
        "seconds": seconds,
        "accuracy": metrics["test"]["accuracy"],
        "epochs": len(metrics["history"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["digits cnn"], choices=list(CONFIGS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    lines = [
        (
            "| config | processes | samples/s | seconds (sum of epochs) | test accuracy | speed-up "
            "| scaling efficiency |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in args.configs:
        overrides = ["--set", f"train.epochs={args.epochs}", "--set", "train.early_stopping_patience=null"]
        batch = yaml.safe_load((REPO / CONFIGS[name]).read_text())["train"]["batch_size"]
        one = run(CONFIGS[name], 1, overrides)
        two = run(
            CONFIGS[name], 2, overrides + ["--set", f"train.batch_size={batch // 2}"]
        )  # same global batch
        efficiency = two["samples_s"] / (2 * one["samples_s"])
        for nproc, r in ((1, one), (2, two)):
            lines.append(
                f"| {name} ({r['epochs']} epochs) | {nproc} | {r['samples_s']:,.0f} | {r['seconds']:.1f} | "
                f"{r['accuracy']:.4f} | {r['samples_s'] / one['samples_s']:.2f}x | "
                f"{'-' if nproc == 1 else f'{efficiency:.0%}'} |"
            )
            print(lines[-1], flush=True)
    import torch

    where = (
        f"{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}, nccl"
        if torch.cuda.is_available()
        else f"CPU only, gloo; {os.cpu_count()} cores shared by the processes"
    )
    body = "\n".join(lines) + (
        f"\n\n{where}. Same global batch: the 2-process run sets `train.batch_size` to half the config's "
        "(each process trains on its half of every global batch), so both take the same optimizer steps on "
        "the same seed; efficiency = 2-process samples/s / (2 x 1-process samples/s)."
        + (
            ""
            if torch.cuda.is_available()
            else (
                " On a CPU both runs use every core (1 process x all threads against 2 processes sharing "
                "them), so a speed-up of 1.0x is the ceiling here: the question is only what data "
                "parallelism costs over intra-op threading, not how it scales across devices."
            )
        )
    )
    print(body)
    if args.write:
        write_section("ddp", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
