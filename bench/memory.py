"""Memory of a tabular training run as the rows grow (issue 7): peak RSS of `foundry train` on
100k, 1M and 5M generated rows, streamed (data.streaming: true) and, for contrast, read whole.

Each run is its own `foundry train` process; its peak resident memory comes from the kernel
(os.wait4 -> ru_maxrss), its seconds per epoch from the run's metrics.json. The table is a CSV
(16 numbers, 2 categories, 3 classes from a noisy rule) written in chunks with Arrow.
Targets: the 5M streamed run's peak within 1.5x of the 100k run's; time per epoch linear in rows.

Run from the repo root on a quiet machine (about 15 minutes on 2 CPU cores; 1.1 GB of CSV in a temp folder):
    .venv/bin/python bench/memory.py --write
    .venv/bin/python bench/memory.py --rows 20000 200000    # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

from record import write_section

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.5


def write_csv(path: Path, rows: int, seed: int = 0, chunk: int = 250_000) -> None:
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=16)
    with pacsv.CSVWriter(path, _schema()) as writer:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.normal(size=(n, 16)).astype(np.float32)
            city = rng.choice(["paris", "lima", "oslo", "pune", "kobe"], n)
            plan = rng.choice(["free", "pro", "team"], n)
            score = (
                x @ weights + (plan == "pro") * 1.5 - (city == "oslo") * 1.0 + rng.normal(scale=1.0, size=n)
            )
            label = np.where(score < -1, "low", np.where(score < 1, "mid", "high"))
            columns = {f"x{i}": x[:, i] for i in range(16)} | {"city": city, "plan": plan, "label": label}
            writer.write_table(pa.table(columns, schema=_schema()))


def _schema() -> pa.Schema:
    return pa.schema(
        [(f"x{i}", pa.float32()) for i in range(16)]
        + [("city", pa.string()), ("plan", pa.string()), ("label", pa.string())]
    )


def train(source: Path, streaming: bool, work: Path, epochs: int) -> dict:
    """One `foundry train` process; its peak RSS and the run's epoch times."""
    home = work / f"runs-{source.stem}-{'stream' if streaming else 'whole'}"
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "tabular_classification",
                "name": "memory",
                "data": {"source": str(source), "label": "label", "streaming": streaming},
                "model": {"name": "mlp", "hidden": [64, 32]},
                "train": {"epochs": epochs, "batch_size": 512, "lr": 0.003, "precision": "fp32"},
            }
        )
    )
    clock = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelfoundry", "train", str(config)],
        env={**os.environ, "FOUNDRY_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - clock
    if status != 0:
        raise SystemExit(f"foundry train failed on {source}:\n{process.stderr.read().decode()[-3000:]}")
    run = next(p for p in home.iterdir() if p.is_dir() and not p.name.startswith("."))
    metrics = json.loads((run / "metrics.json").read_text())
    epoch_seconds = [r["seconds"] for r in metrics["history"]]
    shutil.rmtree(home)
    return {
        "peak_mb": usage.ru_maxrss / 1024,
        "wall": wall,
        "epoch_s": min(epoch_seconds),
        "accuracy": metrics["test"]["accuracy"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument(
        "--whole-up-to", type=int, default=5_000_000, help="also read tables this large whole"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    work = Path(
        tempfile.mkdtemp(prefix="bench-memory-", dir=REPO / "runs" if (REPO / "runs").is_dir() else None)
    )
    results = []
    try:
        for rows in args.rows:
            source = work / f"rows{rows}.csv"
            write_csv(source, rows)
            size_mb = source.stat().st_size / 2**20
            for streaming in (True, False):
                if not streaming and rows > args.whole_up_to:
                    continue
                result = train(source, streaming, work, args.epochs) | {
                    "rows": rows,
                    "streaming": streaming,
                    "csv_mb": size_mb,
                }
                results.append(result)
                print(
                    f"{rows:>10,} rows  {'streamed' if streaming else 'whole':>8}  peak "
                    f"{result['peak_mb']:7.0f} MB  epoch {result['epoch_s']:7.1f} s  wall "
                    f"{result['wall']:6.0f} s  test accuracy {result['accuracy']:.4f}",
                    flush=True,
                )
            source.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body, ok = report(results, args)
    print(body)
    if args.write:
        write_section("memory (tables larger than memory)", body)
    return 0 if ok else 1


def report(results: list[dict], args) -> tuple[str, bool]:
    streamed = [r for r in results if r["streaming"]]
    base = streamed[0]
    lines = [
        (
            "| rows | CSV | reading | peak RSS | vs smallest streamed | best epoch s | s per 1M rows "
            "| wall s | test accuracy |"
        ),
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['csv_mb']:,.0f} MB | {'streamed' if r['streaming'] else 'whole'} | "
            f"{r['peak_mb']:,.0f} MB | {r['peak_mb'] / base['peak_mb']:.2f}x | {r['epoch_s']:.1f} | "
            f"{r['epoch_s'] / r['rows'] * 1e6:.1f} | {r['wall']:.0f} | {r['accuracy']:.4f} |"
        )
    top = streamed[-1]
    ratio = top["peak_mb"] / base["peak_mb"]
    per_row = [r["epoch_s"] / r["rows"] for r in streamed]
    spread = max(per_row) / min(per_row)
    ok = ratio <= TARGET
    checks = [
        (
            f"- peak RSS of the {top['rows']:,}-row streamed run within {TARGET}x of the "
            f"{base['rows']:,}-row one: {ratio:.2f}x: {'pass' if ok else 'FAIL'}"
        ),
        (
            f"- time per epoch linear in rows: seconds per row vary {spread:.2f}x from the smallest to the "
            "largest streamed run (1.00x = exactly linear)"
        ),
    ]
    notes = (
        "`foundry train` with an MLP (64, 32) on a generated CSV (16 numbers, 2 categories, 3 classes), "
        f"{args.epochs} epochs, batch 512, fp32; peak RSS from the kernel (ru_maxrss of the process), best "
        "epoch from metrics.json (training + validation). Streamed: two chunked Arrow passes (validate + "
        "split, then encode to a float32 scratch file beside the runs), training batches read back through a "
        "shuffle window of 65,536 rows. Whole: pandas reads the file, as without data.streaming."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(checks) + "\n\n" + notes, ok


if __name__ == "__main__":
    sys.exit(main())
