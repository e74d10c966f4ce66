"""Test accuracy of the shipped example configs over several seeds, against our targets.

For every config and seed s, `modelfoundry.train(path, overrides=["train.seed=s", "data.split.seed=s"])`
runs the whole pipeline (a new split and a new initialisation per seed) and its test accuracy is kept. Per
config: mean ± std (sample std over seeds), min, the target, pass/FAIL (mean >= target), mean train seconds
(fit: the sum of epoch times) and mean run seconds (the whole train() call). Exits 1 when a config misses
its target (not with --set).

Run from the repo root:
    .venv/bin/python bench/accuracy.py                           # digits, MNIST, breast cancer; seeds 0,1,2
    .venv/bin/python bench/accuracy.py --write                   # also record it in bench/RESULTS.md
    .venv/bin/python bench/accuracy.py --configs examples/wine.yaml=0.95 --seeds 0
    .venv/bin/python bench/accuracy.py --set train.epochs=1 --seeds 0   # smoke test (misses the targets)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from modelfoundry.runner import train
from record import write_section

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"examples/digits.yaml": 0.99, "examples/mnist.yaml": 0.98, "examples/breast_cancer.yaml": 0.96}


def shown(path: Path) -> str:
    """The path relative to the repo root when it is inside it, e.g. examples/digits.yaml."""
    return path.resolve().relative_to(REPO).as_posix() if path.resolve().is_relative_to(REPO) else str(path)


def parse_config(item: str) -> tuple[Path, float | None]:
    """`PATH[=TARGET]`; without a target, the one in TARGETS for that path (or none). PATH is tried against
    the working folder, then the repo root."""
    name, _, target = item.partition("=")
    path = Path(name) if Path(name).exists() else REPO / name
    if not path.is_file():
        raise SystemExit(f"--configs: {name} not found (looked in {Path.cwd()} and {REPO}).")
    if target:
        return path, float(target)
    return path, TARGETS.get(shown(path))


def train_seed(path: Path, seed: int, extra: list[str], console: Console) -> dict:
    """One run: its test accuracy, fit seconds, whole-run seconds and epochs run."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = train(
            path,
            overrides=[f"train.seed={seed}", f"data.split.seed={seed}", *extra],
            run_dir=Path(tmp) / "run",
            console=console,
        )
        seconds = time.perf_counter() - start
    history = run.metrics["history"]
    return {
        "accuracy": run.metrics["test"]["accuracy"],
        "train_s": sum(h["seconds"] for h in history),
        "run_s": seconds,
        "epochs": len(history),
    }


def report(
    results: dict[Path, list[dict]], targets: dict[Path, float | None], extra: list[str]
) -> tuple[str, bool]:
    """The markdown table and whether every config with a target met it."""
    rows = [
        (
            "| config | seeds | test accuracy (mean ± std) | per seed | min | target | result | train s "
            "| run s |"
        ),
        "|---|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    all_pass = True
    for path, runs in results.items():
        accuracy = [r["accuracy"] for r in runs]
        mean, std = statistics.mean(accuracy), statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        target = targets[path]
        passed = target is None or mean >= target
        all_pass &= passed
        per_seed = " ".join(f"{a:.4f}" for a in accuracy)
        rows.append(
            f"| {shown(path)} | {len(runs)} | {mean:.4f} ± {std:.4f} | {per_seed} | "
            f"{min(accuracy):.4f} | {'-' if target is None else f'>= {target:g}'} | "
            f"{'-' if target is None else 'pass' if passed else 'FAIL'} | "
            f"{statistics.mean(r['train_s'] for r in runs):.1f} | "
            f"{statistics.mean(r['run_s'] for r in runs):.1f} |"
        )
    notes = [
        (
            "per seed s: train.seed=s and data.split.seed=s (a different split each seed); result: mean >= "
            "target; std: sample std over seeds; train s: fit time (sum of epoch times); run s: the whole "
            "train() call"
        )
    ]
    if extra:
        notes.append(f"extra overrides: {' '.join(extra)} (not the shipped configs: targets do not apply)")
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {note}" for note in notes), all_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(TARGETS),
        metavar="PATH[=TARGET]",
        help="example configs (default: digits, MNIST, breast cancer with their targets)",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        dest="extra",
        metavar="KEY=VALUE",
        help="extra overrides for every run, e.g. train.epochs=1 for a smoke test",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show foundry's own output (epochs, data report)"
    )
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = dict(parse_config(item) for item in args.configs)
    home = tempfile.TemporaryDirectory(prefix="foundry-bench-")  # removed at exit
    os.environ["FOUNDRY_HOME"] = home.name  # the run registry goes here, not into ./runs
    console = Console(stderr=True, quiet=not args.verbose)

    results: dict[Path, list[dict]] = {}
    for path in targets:
        for seed in seeds:
            result = train_seed(path, seed, args.extra, console)
            results.setdefault(path, []).append(result)
            print(
                f"{path.name} seed {seed}: test accuracy {result['accuracy']:.4f} ({result['epochs']} "
                f"epochs, fit {result['train_s']:.1f} s, run {result['run_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    body, all_pass = report(results, targets, args.extra)
    print(body)
    if args.write:
        print(f"written to {write_section('accuracy', body)}", file=sys.stderr)
    sys.exit(0 if all_pass or args.extra else 1)


if __name__ == "__main__":
    main()
