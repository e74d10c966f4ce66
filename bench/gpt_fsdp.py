"""A GPT on one process, on two with DDP and on two with FSDP (`train.strategy: fsdp`), side by side in one
run: training tokens/s (metrics.json: trained tokens / the evaluation intervals' seconds, which include
rank 0's validation and, under FSDP, gathering the whole weights and optimizer state to rank 0) and the
peak resident memory (VmHWM) of each training process.

The same config, seed and batch per process (8 windows of 64 tokens); `train.max_steps` counts windows
of one process, so two processes make half the optimizer steps on twice the windows and all three
runs train on the same number of tokens. On CPU the processes share the cores: one process with 2 torch
threads (and with 1), each of two processes 1.

Then the memory of a larger GPT (8 layers x 512 wide, 29M parameters) under each strategy, apart from
this machine's load: torchrun starts this file as workers that build the model, wrap it as `foundry
train` does (`training.distributed.shard_model` for FSDP, DistributedDataParallel for DDP) and take two
AdamW steps; each reports the bytes of weights, gradients and optimizer state it holds (FSDP: its
shards, plus rank 0's whole CPU copy) and its peak RSS.

    .venv/bin/python bench/gpt_fsdp.py [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from record import write_section

REPO = Path(__file__).resolve().parents[1]
MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 64}
# name: (processes, strategy, torch threads per process)
RUNS = {
    "1 process, 2 threads": (1, None, 2),
    "1 process, 1 thread": (1, None, 1),
    "2 processes, ddp": (2, "ddp", 1),
    "2 processes, fsdp": (2, "fsdp", 1),
}


def corpus(folder: Path) -> Path:
    """200 KB of English: this repository's README and benchmark results, repeated as needed."""
    text = (REPO / "README.md").read_text() + (REPO / "bench" / "RESULTS.md").read_text()
    path = folder / "corpus.txt"
    path.write_text((text * (1 + 200_000 // len(text)))[:200_000])
    return path


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc: Linux only)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            pass
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, up in parent.items() if up in frontier]
        found += frontier
    return found


def peaks(root: int, found: dict[int, int], done: threading.Event) -> None:
    """Every 0.2 s: the peak RSS (VmHWM, bytes) of each process under `root` but torchrun itself."""
    while not done.is_set():
        for pid in descendants(root):
            try:
                if b"torch.distributed.run" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue  # torchrun itself, not a training process
                status = Path(f"/proc/{pid}/status").read_text()
                hwm = next(
                    int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM")
                )
                found[pid] = max(found.get(pid, 0), hwm)
            except (OSError, StopIteration):
                pass
        time.sleep(0.2)


def run(folder: Path, name: str, nproc: int, strategy: str | None, threads: int, steps: int) -> dict:
    home = folder / name.replace(" ", "-").replace(",", "")
    config = {
        "task": "text_generation",
        "data": {"source": str(corpus(folder))},
        "model": MODEL,
        "train": {"max_steps": steps, "batch_size": 8, "precision": "fp32", "device": "cpu", "seed": 0},
    }
    if strategy:
        config["train"]["strategy"] = strategy
    (folder / "gpt.yaml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "modelfoundry",
        "train",
        str(folder / "gpt.yaml"),
        "--run-dir",
        str(home),
    ]
    command += ["--nproc", str(nproc)] if nproc > 1 else []
    env = {**os.environ, "FOUNDRY_HOME": str(folder / "registry"), "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found: dict[int, int] = {}
    done = threading.Event()
    watcher = threading.Thread(target=peaks, args=(process.pid, found, done))
    watcher.start()
    _, stderr = process.communicate()
    done.set()
    watcher.join()
    if process.returncode:
        raise SystemExit(f"{name} failed:\n{stderr}")
    metrics = json.loads((home / "metrics.json").read_text())
    if nproc > 1:
        found.pop(process.pid, None)  # the launcher: no torch, a few dozen MB
    return {
        "tokens_s": metrics["throughput"]["tokens_per_second"],
        "val_bpb": metrics["val"]["bits_per_byte"],
        "peak_mb": sorted((v / 2**20 for v in found.values()), reverse=True),
        "wall_s": time.perf_counter() - started,
        "parameters": metrics["model"]["parameters"],
    }


LARGE = {"n_layer": 8, "n_head": 8, "n_embd": 512, "block_size": 128}


def worker(strategy: str) -> None:
    """One process of the memory measurement (started by torchrun; `strategy` none, ddp or fsdp)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from modelfoundry.models.gpt import build_gpt
    from modelfoundry.training import distributed

    torch.set_num_threads(1)
    distributed.init("cpu")
    model = build_gpt((0,), 0, 8192, 0, **LARGE)
    if strategy == "fsdp":
        net = distributed.shard_model(model)
    elif strategy == "ddp":
        net = DistributedDataParallel(model)
    else:
        net = model
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randint(0, 8192, (2, LARGE["block_size"]))
    for _ in range(2):
        torch.nn.functional.cross_entropy(net(x).flatten(0, 1), x.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients kept, as they are at their peak

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    held = sum(local(p).nbytes + local(p.grad).nbytes for p in net.parameters())
    held += sum(local(v).nbytes for state in optimizer.state.values() for v in state.values() if v.dim())
    if strategy == "fsdp" and distributed.is_main():
        held += sum(p.nbytes for p in model.parameters())  # the whole copy rank 0 keeps for checkpoints
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM"))
    row = {"rank": distributed.rank(), "held_mb": held / 2**20, "peak_mb": hwm / 2**20}
    rows = [None] * distributed.world_size()
    if distributed.world_size() > 1:
        dist.all_gather_object(rows, row)
    else:
        rows = [row]
    if distributed.is_main():
        print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()), "rows": rows}))


def memory(strategy: str) -> dict:
    nproc = 1 if strategy == "none" else 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    command += [__file__, "--worker", strategy]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    parser.add_argument("--memory-only", action="store_true", help="only the memory of the larger GPT")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    lines = [] if args.memory_only else throughput(args.steps)
    sizes = {
        name: memory(strategy) for name, strategy in (("1 process", "none"), ("ddp", "ddp"), ("fsdp", "fsdp"))
    }
    lines += [
        "",
        (
            f"Memory per process, GPT {LARGE['n_layer']} layers x {LARGE['n_embd']} wide "
            f"({sizes['ddp']['parameters'] / 1e6:.1f}M parameters), two AdamW steps (batch 2 x "
            f"{LARGE['block_size']} tokens): weights + gradients + AdamW moments held, and peak RSS."
        ),
        "",
        "| run | rank | weights + grads + AdamW held (MB) | peak RSS (MB) |",
        "|---|---:|---:|---:|",
    ]
    for name, result in sizes.items():
        for row in result["rows"]:
            lines.append(f"| {name} | {row['rank']} | {row['held_mb']:,.0f} | {row['peak_mb']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section("GPT on two processes: DDP against FSDP (bench/gpt_fsdp.py)", table)
    return 0


def throughput(steps: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="bench-fsdp-") as tmp:
        results = {name: run(Path(tmp), name, *spec, steps) for name, spec in RUNS.items()}
    base = results["1 process, 2 threads"]
    lines = [
        (
            f"GPT {MODEL['n_layer']} layers x {MODEL['n_embd']} wide, context {MODEL['block_size']} "
            f"({base['parameters'] / 1e6:.1f}M parameters), {steps} steps of 8 windows per process, fp32."
        ),
        "",
        "| run | tokens/s | vs 1 process | peak RSS per training process (MB) | val bits/byte | wall s |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['tokens_s']:,.0f} | {r['tokens_s'] / base['tokens_s']:.2f}x | "
            f"{', '.join(f'{m:,.0f}' for m in r['peak_mb'])} | {r['val_bpb']:.4f} | {r['wall_s']:.0f} |"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
