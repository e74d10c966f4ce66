"""Tabular regression: foundry's shipped diabetes config against scikit-learn on the same split.

For each seed s, `modelfoundry.train(examples/diabetes.yaml, ["train.seed=s", "data.split.seed=s"])` trains
and scores the MLP; then `Ridge` (alpha chosen by cross-validation on the training rows) and
`HistGradientBoostingRegressor` (defaults) are fitted on the very same training rows (train + val, the
rows foundry learns from or validates on) and scored on the same test rows. Prints test R2 / RMSE as
mean ± std over seeds, and the seconds each took.

Run from the repo root:
    .venv/bin/python bench/regression.py              # seeds 0,1,2
    .venv/bin/python bench/regression.py --write      # also record it in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_squared_error, r2_score

from modelfoundry.config import load_config
from modelfoundry.data.prepare import prepare
from modelfoundry.runner import train
from record import write_section

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "diabetes.yaml"


def same_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Encoded features and true values of foundry's split for `seed`: (train+val X, y), (test X, y)."""
    cfg, base = load_config(CONFIG, [f"data.split.seed={seed}", f"train.seed={seed}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare(cfg, base)
    mean, std = data.target["mean"], data.target["std"]

    def values(part) -> np.ndarray:
        return part.targets.numpy().astype(np.float64) * std + mean

    x = np.concatenate([data.train.inputs.numpy(), data.val.inputs.numpy()])
    y = np.concatenate([values(data.train), values(data.val)])
    return x, y, data.test.inputs.numpy(), values(data.test)


def score(model, x, y, x_test, y_test) -> dict:
    start = time.perf_counter()
    model.fit(x, y)
    seconds = time.perf_counter() - start
    predicted = model.predict(x_test)
    return {
        "r2": r2_score(y_test, predicted),
        "rmse": mean_squared_error(y_test, predicted) ** 0.5,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {
        "foundry mlp (examples/diabetes.yaml)": [],
        "Ridge (RidgeCV)": [],
        "HistGradientBoostingRegressor": [],
    }
    quiet = Console(quiet=True)
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = train(
                CONFIG,
                [f"train.seed={seed}", f"data.split.seed={seed}"],
                run_dir=Path(tmp) / "run",
                console=quiet,
            )
            test = run.metrics["test"]
            results["foundry mlp (examples/diabetes.yaml)"].append(
                {
                    "r2": test["r2"],
                    "rmse": test["rmse"],
                    "seconds": time.perf_counter() - start,
                    "baseline_rmse": test["baseline"]["rmse"],
                }
            )
        x, y, x_test, y_test = same_split(seed)
        results["Ridge (RidgeCV)"].append(score(RidgeCV(alphas=np.logspace(-3, 3, 13)), x, y, x_test, y_test))
        results["HistGradientBoostingRegressor"].append(
            score(HistGradientBoostingRegressor(random_state=seed), x, y, x_test, y_test)
        )
        print(
            f"seed {seed}: "
            + ", ".join(f"{k.split(' ')[0]} R2 {v[-1]['r2']:.4f}" for k, v in results.items()),
            file=sys.stderr,
        )

    def fmt(values: list[float], spec: str) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):{spec}} ± {spread:{spec}}"

    lines = [
        (
            f"Test rows of foundry's own split (data.split.seed = train.seed = s), seeds {args.seeds}; "
            "mean ± std over seeds. scikit-learn fits on the train + validation rows, foundry trains on "
            "train and stops early on validation. Seconds: foundry's whole `train()` run (data, training, "
            "report, package); the others their `fit`."
        ),
        "",
        "| model | test R2 | test RMSE | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for name, rows in results.items():
        lines.append(
            f"| {name} | {fmt([r['r2'] for r in rows], '.4f')} | {fmt([r['rmse'] for r in rows], '.2f')} "
            f"| {fmt([r['seconds'] for r in rows], '.2f')} |"
        )
    baseline = [r["baseline_rmse"] for r in results["foundry mlp (examples/diabetes.yaml)"]]
    lines.append(f"| (predict the training mean) | 0 | {fmt(baseline, '.2f')} | - |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        import sklearn

        write_section(
            "Tabular regression: diabetes (bench/regression.py)", table, {"scikit-learn": sklearn.__version__}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
