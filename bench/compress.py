"""Compression targets of issue 5, measured: int8 size, accuracy and speed; a distilled student.

For each model (the digits CNN, the MNIST CNN, the SST-2 MiniLM): train it (or take `--run NAME=PATH`),
then make the int8 variant, a distilled student with about half the parameters, and (with
--prune) a 50%-pruned copy, all through the same functions `foundry compress` calls, and measure
every variant on the whole test split (compress/tradeoff.py). Targets per model:
- int8 ONNX file <= 30% of the fp32 ONNX file;
- int8 accuracy drop <= 1 point;
- int8 throughput at batch 32 >= 2x the fp32 PyTorch model's;
- student parameters <= 50% of the teacher's, accuracy >= 97% of the teacher's.

Run from the repo root (the SST-2 teacher takes ~17 min to fine-tune; pass an existing run):
    .venv/bin/python bench/compress.py --models digits mnist --write
    .venv/bin/python bench/compress.py --models sst2 --run sst2=/tmp/bench-runs/sst2-minilm --write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from record import write_section

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"digits": "examples/digits.yaml", "mnist": "examples/mnist.yaml", "sst2": "examples/sst2.yaml"}
# Students: the teacher's family at ~0.7x width (about half the parameters) for the CNNs; for MiniLM,
# whose 30,522 x 384 word embeddings alone are half its 22.7M parameters, a BiLSTM on the same tokens.
STUDENTS = {
    "digits": ["model.name=cnn", "model.width=22"],
    "mnist": ["model.name=cnn", "model.width=22"],
    "sst2": ["model.name=lstm", "model.embed_dim=128", "model.hidden=128"],
}
STUDENT_EPOCHS = {"digits": None, "mnist": None, "sst2": 2}  # sst2: the teacher runs on every batch
# The student trains with the teacher's settings except these: a fine-tuning lr (1e-4) starves an LSTM
# from scratch.
STUDENT_TRAIN = {
    "digits": [],
    "mnist": [],
    "sst2": [
        "train.lr=0.002",
        "train.optimizer=adam",
        "train.schedule=cosine",
        "train.warmup=0",
        "train.batch_size=64",
        "model.pooling=max",
        "model.dropout=0.3",
    ],
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["digits", "mnist"], choices=list(CONFIGS))
    parser.add_argument("--run", action="append", default=[], help="NAME=RUN_FOLDER: use a trained run")
    parser.add_argument(
        "--prune", action="store_true", help="also a 50%% structured prune + 2 epochs of fine-tuning"
    )
    parser.add_argument(
        "--quick", action="store_true", help="1-epoch teachers and students (checks the script)"
    )
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("FOUNDRY_HOME", tempfile.mkdtemp(prefix="bench-compress-"))
    console = Console(stderr=True)
    given = dict(item.split("=", 1) for item in args.run)
    sections, misses = [], 0
    for name in args.models:
        result, missed = bench_one(name, given.get(name), args, console)
        sections.append(result)
        misses += missed
    body = "\n\n".join(sections)
    print(body)
    if args.write and not args.quick:
        write_section("compress", body + "\n\n" + f"Command: `{' '.join(['python', *sys.argv])}`")
    return 1 if misses else 0


def bench_one(name: str, run: str | None, args, console: Console) -> tuple[str, int]:
    from modelfoundry.compress import make, quantize, tradeoff
    from modelfoundry.runner import train

    quick = ["train.epochs=1"] if args.quick else []
    if run is None:
        run = str(train(REPO / CONFIGS[name], quick, console=console).path)
    parent = Path(run)
    quantize.quantize_int8(parent, console=console)
    make.distill(
        parent,
        STUDENTS[name] + [o for o in STUDENT_TRAIN[name] if o.startswith("model.")],
        1 if args.quick else STUDENT_EPOCHS[name],
        console=console,
        overrides=[o for o in STUDENT_TRAIN[name] if o.startswith("train.")],
    )
    if args.prune:
        make.prune_and_finetune(parent, 0.5, 1 if args.quick else 2, console=console)
    result = tradeoff.measure_all(parent)
    tradeoff.write_report(parent, result)
    rows = {r["model"]: r for r in result["rows"]}
    original, int8 = rows["original"], rows["int8"]
    fp32_onnx = rows.get("original, ONNX fp32")
    student = rows["distilled"]
    checks = [
        (
            "int8 file vs fp32 ONNX file",
            int8["bytes"] / fp32_onnx["bytes"],
            "<= 0.30",
            int8["bytes"] / fp32_onnx["bytes"] <= 0.30,
        ),
        (
            "int8 accuracy drop (points)",
            100 * (original["accuracy"] - int8["accuracy"]),
            "<= 1.0",
            original["accuracy"] - int8["accuracy"] <= 0.01,
        ),
        (
            "int8 throughput vs fp32 PyTorch, batch 32",
            int8["throughput_per_s"] / original["throughput_per_s"],
            ">= 2.0",
            int8["throughput_per_s"] / original["throughput_per_s"] >= 2.0,
        ),
        (
            "student parameters vs teacher",
            student["parameters"] / original["parameters"],
            "<= 0.50",
            student["parameters"] / original["parameters"] <= 0.50,
        ),
        (
            "student accuracy vs teacher",
            student["accuracy"] / original["accuracy"],
            ">= 0.97",
            student["accuracy"] / original["accuracy"] >= 0.97,
        ),
    ]
    table = [
        (
            "| model | size MB | parameters | p50 ms b1 | p50 / p99 ms b32 | per s b32 | accuracy | F1 "
            "| agrees | Pareto |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        table.append(
            f"| {r['model']} | {r['bytes'] / 1e6:.2f} | {r['parameters']:,} | {r['batch1_p50_ms']:.2f} | "
            f"{r['batch32_p50_ms']:.2f} / {r['batch32_p99_ms']:.2f} | {r['throughput_per_s']:,.0f} | "
            f"{r['accuracy']:.4f} | {r['f1_macro']:.4f} | {r['agreement']:.1%} | "
            f"{'yes' if r['pareto'] else ''} |"
        )
    student_epochs = STUDENT_EPOCHS[name] or "the teacher's"
    targets = ["| target | measured | aim | |", "|---|---:|---|---|"]
    targets += [
        f"| {what} | {value:.3f} | {aim} | {'PASS' if ok else 'MISS'} |" for what, value, aim, ok in checks
    ]
    from modelfoundry.runfiles import runs_root

    int8_record = json.loads((runs_root() / rows["int8"]["run"] / "model" / "model.json").read_text())[
        "variant"
    ]
    text = (
        f"### {name} ({CONFIGS[name]}{', 1-epoch quick run' if args.quick else ''})\n\n"
        f"{result['test_examples']} test examples, {result['threads']} threads; int8 {int8_record['method']}"
        + (
            f" calibrated on {int8_record['calibration_examples']} training inputs"
            if int8_record["calibration_examples"]
            else ""
        )
        + f"; student {' '.join(STUDENTS[name] + STUDENT_TRAIN[name])}, {student_epochs} epochs.\n\n"
        + "\n".join(table)
        + "\n\n"
        + "\n".join(targets)
    )
    return text, sum(not ok for *_, ok in checks)


if __name__ == "__main__":
    sys.exit(main())
