"""k-fold cross-validation: `foundry train CONFIG --folds K` (train.folds).

The seeded split's train and validation parts are pooled and cut into K folds, stratified on what the
split stratifies on (the classes; quantile bins of a number for regression). The test part stays as the
seed made it, and no fold sees it. Each fold trains through the runner's own path (`runner._run`) with
that fold as its validation split, so every model family trains under folds as it trains alone. The mean
and standard deviation of each validation metric go into metrics.json (`folds`) and the report. Then
either the final model trains on all of train+val (for the folds' median best epoch: there is no
validation split left to stop on), or, with `--folds-ensemble`, the K fold models become the run's package
as an ensemble (ensemble.py) averaging their probabilities (or values).

    runs/<id>/folds/fold-1/ ... fold-K/   each fold's run files and model package
    runs/<id>/folds/oof.safetensors       out-of-fold predictions of every train+val example, each made by
    runs/<id>/folds/oof.json              the Predictor of the fold that held it out, and their targets:
                                          `foundry ensemble --method stack` fits its stacker on them
"""

from __future__ import annotations

import html
import json
import shutil
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from modelfoundry.errors import UserError
from modelfoundry.models.registry import family_of
from modelfoundry.runfiles import atomic_write, atomic_write_json
from modelfoundry.tasks import get_task

FOLDS = "folds"
OOF_PREDICTIONS, OOF_TARGETS = "oof.safetensors", "oof.json"


@dataclass
class FoldPlan:
    """Which examples each fold holds out, cut once from the data's seeded split.

    Indices are into the examples `prepare` keeps (after dropping duplicates), as in its split."""

    k: int
    seed: int
    stratify: bool
    is_classifier: bool
    pool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # train+val examples
    fold_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (len(pool),) 0..k-1
    train_only: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # corrections, repeated
    test: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def cut(self, split: dict, strata: np.ndarray, part_of: np.ndarray) -> dict:
        """A `prepare` resplit that cuts the folds; its test part is the pool then the test split, so the
        prepared data's `test_display` holds the raw inputs of both (for out-of-fold predictions)."""
        from sklearn.model_selection import KFold, StratifiedKFold

        train = split["train"]
        feedback = part_of[train] == "feedback"
        self.train_only, self.test = train[feedback], split["test"]
        self.pool = np.sort(np.concatenate([np.unique(train[~feedback]), split["val"]]))
        self._check(strata[self.pool])
        self.fold_of = np.zeros(len(self.pool), np.int64)
        splitter = (
            StratifiedKFold(self.k, shuffle=True, random_state=self.seed)
            if self.stratify
            else KFold(self.k, shuffle=True, random_state=self.seed)
        )
        with warnings.catch_warnings():  # a regression's quantile bin smaller than k: still cut, less even
            warnings.simplefilter("ignore")
            for i, (_, held) in enumerate(splitter.split(np.zeros(len(self.pool)), strata[self.pool])):
                self.fold_of[held] = i
        return {
            "train": np.concatenate([self.pool, self.train_only]),
            "val": self.pool[:0],
            "test": np.concatenate([self.pool, self.test]),
        }

    def _check(self, strata: np.ndarray) -> None:
        k = self.k
        if len(strata) < k:
            raise UserError(
                f"train.folds (--folds {k}): train+val hold {len(strata)} examples, fewer than {k} folds. "
                f"Use --folds {max(2, len(strata))} or fewer, or more data."
            )
        if self.is_classifier and self.stratify:
            rarest, count = min(Counter(strata.tolist()).items(), key=lambda item: (item[1], item[0]))
            if count < k:
                raise UserError(
                    f"train.folds (--folds {k}): class '{rarest}' has {count} example(s) in train+val, "
                    f"fewer than the {k} folds, and each fold's validation part needs one. Use --folds "
                    f"{max(2, count)} or fewer, add examples of '{rarest}', or set "
                    "data.split.stratify: false."
                    if count >= 2
                    else f"train.folds (--folds {k}): class '{rarest}' has {count} example in train+val; "
                    "stratified folds need at least 2 of each class. Add examples of it, remove the class, "
                    "or set data.split.stratify: false."
                )

    def fold(self, i: int):
        """The resplit that trains fold i: the other folds (and any corrections) train, fold i validates, and
        the test split is left out (only the final model, or the fold ensemble, is tested)."""

        def resplit(split: dict, strata: np.ndarray, part_of: np.ndarray) -> dict:
            self._same_split(split)
            held = self.fold_of == i
            return {
                "train": np.concatenate([self.pool[~held], self.train_only]),
                "val": self.pool[held],
                "test": self.test[:0],
            }

        return resplit

    def everything(self, split: dict, strata: np.ndarray, part_of: np.ndarray) -> dict:
        """The resplit of the final model: all of train+val trains; the test split is as always."""
        self._same_split(split)
        return {
            "train": np.concatenate([self.pool, self.train_only]),
            "val": self.pool[:0],
            "test": self.test,
        }

    def _same_split(self, split: dict) -> None:
        if not np.array_equal(split["test"], self.test):  # the data changed between two reads: a bug
            raise RuntimeError("the data's split changed between the folds")


def train_folds(cfg, base_dir: Path, path: Path, console: Console, device) -> tuple[dict, dict]:
    """Train the K folds of `cfg`, then the final model or the fold ensemble, into the run folder `path`.
    Returns the run's metrics (with `folds`: the mean and std of each validation metric) and timings."""
    from modelfoundry.data.prepare import prepare
    from modelfoundry.predictor import load
    from modelfoundry.runner import _run

    k = cfg.train.folds  # the runner refused --resume and DDP before it came here
    task = get_task(cfg.task)
    plan = FoldPlan(k, cfg.data.split.seed, cfg.data.split.stratify, task.is_classifier)
    clock = time.perf_counter()
    with warnings.catch_warnings():  # its test part overlaps training on purpose; fold 1 reports the data
        warnings.simplefilter("ignore")
        pooled = prepare(cfg, base_dir, plan.cut)
    inputs, targets = list(pooled.test_display), task.heldout_targets(pooled)
    n = len(plan.pool)
    console.print(
        f"folds: {k} stratified folds over the {n:,} train+val examples"
        f"{'' if plan.stratify else ' (not stratified: data.split.stratify is false)'}; "
        f"the {len(plan.test):,} test examples stay out of every fold",
        highlight=False,
    )
    folds_dir = path / FOLDS
    shutil.rmtree(folds_dir, ignore_errors=True)
    per_fold, oof, timings = [], None, {"data": time.perf_counter() - clock, "train": 0.0, "evaluate": 0.0}
    for i in range(k):
        held = np.flatnonzero(plan.fold_of == i)
        console.print(
            f"fold {i + 1}/{k}: {n - len(held):,} examples train, {len(held):,} validate", highlight=False
        )
        with warnings.catch_warnings():
            if i:  # the data's warnings once, with the first fold
                warnings.simplefilter("ignore")
            metrics, fold_timings, _ = _run(
                cfg, base_dir, folds_dir / f"fold-{i + 1}", False, console, device, resplit=plan.fold(i)
            )
        for key, seconds in fold_timings.items():
            timings[key] = timings.get(key, 0.0) + seconds
        predictions = load(folds_dir / f"fold-{i + 1}").predictions([inputs[j] for j in held])
        oof = np.zeros((n, *predictions.shape[1:]), np.float32) if oof is None else oof
        oof[held] = predictions
        per_fold.append({"fold": i + 1, "examples": len(held), **_fold_record(metrics)})
        console.print(f"fold {i + 1}/{k}: {_line(metrics.get('val', {}))}", highlight=False)
    _save_oof(folds_dir, plan, oof, targets[:n])
    summary = summarise(per_fold, k, n, plan.seed)
    console.print(
        f"cross-validation over {k} folds (mean ± std): {_summary_line(summary, task)}", highlight=False
    )
    if cfg.train.folds_ensemble:
        from modelfoundry.ensemble import Heldout, write_ensemble

        summary["final"] = f"the {k} fold models, their predictions averaged (--folds-ensemble)"
        clock = time.perf_counter()
        shutil.copy(folds_dir / "fold-1" / "data_report.json", path / "data_report.json")
        members = [load(folds_dir / f"fold-{i + 1}") for i in range(k)]
        test = Heldout(inputs[n:], targets[n:]) if len(plan.test) else None
        metrics = write_ensemble(
            path,
            members,
            [f"fold-{i + 1}" for i in range(k)],
            "mean",
            {"test": test},
            console,
            extra_metrics={"folds": summary},
            extra_sections=[report_section(summary)],
            data_report=json.loads((path / "data_report.json").read_text()),
        )
        timings["evaluate"] += time.perf_counter() - clock
        return metrics, timings
    final, how = _final_config(cfg, per_fold)
    summary["final"] = how
    console.print(f"final model: {how}", highlight=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics, final_timings, _ = _run(
            final,
            base_dir,
            path,
            False,
            console,
            device,
            resplit=plan.everything,
            extra_metrics={"folds": summary},
            extra_sections=[report_section(summary)],
        )
    for key, seconds in final_timings.items():
        timings[key] = timings.get(key, 0.0) + seconds
    return metrics, timings


def _fold_record(metrics: dict) -> dict:
    """What the folds table keeps of a fold's run: its validation numbers and its best epoch."""
    record = {k: v for k, v in metrics.get("val", {}).items() if _is_number(v)}
    if "best_epoch" in metrics:
        record["best_epoch"] = metrics["best_epoch"]
    return record


def _final_config(cfg, per_fold: list[dict]):
    """The config of the final model: without a validation split it cannot stop early nor keep its best
    epoch, so it trains for the folds' median best epoch (or round: `for_epochs`)."""
    epochs = [f["best_epoch"] for f in per_fold if "best_epoch" in f]
    n = sum(f["examples"] for f in per_fold)
    how = f"trained on all {n:,} train+val examples"
    if not epochs:
        return for_epochs(cfg, None, "")[0], how
    median = max(1, round(statistics.median(epochs)))
    final, length = for_epochs(cfg, median, f"the median best {{}} of the {len(per_fold)} folds: {epochs}")
    return final, f"{how} for {length}" if length else how


def for_epochs(cfg, epochs: int | None, why: str):
    """`cfg` trained with no validation split to stop on: early stopping off and, for `epochs`, train.epochs
    set to it, or the option that counts the rounds of a family that trains itself (`Family.rounds`: gbdt's
    n_estimators, which train.epochs does not limit). `why`'s {} is "epoch" or "round". Returns the config
    and its length in words ("" for a family fitted without epochs: linear)."""
    updates, recipe = {"early_stopping_patience": None}, dict(cfg.recipe)
    recipe.pop("train.early_stopping_patience", None)
    family = family_of(cfg.model.name)
    model, length = cfg.model, ""
    if epochs and family.rounds:
        model = cfg.model.model_copy(update={family.rounds: epochs})
        recipe[f"model.{family.rounds}"] = why.format("round")
        length = f"{epochs} rounds (model.{family.rounds}: {why.format('round')})"
    elif epochs and not family.trains:  # the gradient loop's epochs (linear fits to convergence)
        updates["epochs"] = epochs
        recipe["train.epochs"] = why.format("epoch")
        length = f"{epochs} epochs ({why.format('epoch')})"
    train = cfg.train.model_copy(update=updates)
    return cfg.model_copy(update={"train": train, "model": model, "recipe": recipe}), length


def summarise(per_fold: list[dict], k: int, examples: int, seed: int) -> dict:
    """The mean and standard deviation (sample, ddof=1) over the folds of each validation number."""
    keys = [key for key in per_fold[0] if key not in ("fold", "examples", "best_epoch")]
    mean, std = {}, {}
    for key in keys:
        values = [f[key] for f in per_fold if _is_number(f.get(key))]
        if len(values) == len(per_fold):
            mean[key], std[key] = statistics.fmean(values), statistics.stdev(values)
    return {"k": k, "examples": examples, "seed": seed, "mean": mean, "std": std, "per_fold": per_fold}


def paired_differences(first: tuple[str, dict], other: tuple[str, dict]) -> list[str]:
    """Two runs' folds compared fold by fold, when they cut the same folds (same k, seed and examples): per
    validation number, the difference of the means and its paired standard error (the std of the per-fold
    differences / sqrt(k)), which the folds' own difficulty does not inflate. Empty when the folds differ."""
    (a, fa), (b, fb) = first, other
    if not fa or not fb or any(fa[key] != fb[key] for key in ("k", "seed", "examples")):
        return []
    lines = []
    for key in [
        k
        for k in ("accuracy", "f1_macro", "loss", "rmse", "mae", "r2")
        if k in fa["mean"] and k in fb["mean"]
    ]:
        differences = [x[key] - y[key] for x, y in zip(fa["per_fold"], fb["per_fold"])]
        gap, error = statistics.fmean(differences), statistics.stdev(differences) / np.sqrt(fa["k"])
        verdict = "apart" if abs(gap) > 2 * error else "not apart"
        lines.append(
            f"val {key}: {a} - {b} = {gap:+.4f}, paired standard error {error:.4f} over the same "
            f"{fa['k']} folds: {verdict} (2 standard errors)"
        )
    return lines


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _line(val: dict) -> str:
    shown = [k for k in ("accuracy", "f1_macro", "rmse", "r2") if k in val]
    return "  ".join(f"val {k} {val[k]:.4f}" for k in shown)


def _summary_line(summary: dict, task) -> str:
    shown = [k for k in dict.fromkeys(task.headline + ("rmse", "r2")) if k in summary["mean"]]
    return "  ".join(f"val {k} {summary['mean'][k]:.4f} ± {summary['std'][k]:.4f}" for k in shown)


def report_section(summary: dict) -> tuple[str, str, str]:
    """The report's section: each validation number's mean ± std, and every fold's."""
    folds = summary["per_fold"]
    head = "".join(f"<th>fold {f['fold']}</th>" for f in folds)
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td>{summary['mean'][key]:.4f}</td><td>{summary['std'][key]:.4f}</td>"
        + "".join(f"<td>{f[key]:.4f}</td>" for f in folds)
        + "</tr>"
        for key in summary["mean"]
    )
    if all("best_epoch" in f for f in folds):
        rows += "<tr><td>best epoch</td><td></td><td></td>" + "".join(
            f"<td>{f['best_epoch']}</td>" for f in folds
        )
        rows += "</tr>"
    body = (
        f"<p>{summary['k']} folds over the {summary['examples']:,} train+val examples "
        f"(seed {summary['seed']}); the test split stays out of every fold. Each number: the mean over the "
        f"folds ± its standard deviation (ddof=1). Final model: {html.escape(summary.get('final', ''))}.</p>"
        f"<table><tr><th>validation</th><th>mean</th><th>± std</th>{head}</tr>{rows}</table>"
    )
    return "folds", f"Cross-validation ({summary['k']} folds)", body


def _save_oof(folder: Path, plan: FoldPlan, predictions: np.ndarray, targets: list) -> None:
    """Out-of-fold predictions (N, C) or (N,) of the train+val examples (`index`: their position in the
    prepared data), and their targets as users write them."""
    import torch
    from safetensors.torch import save

    tensors = {
        "predictions": torch.from_numpy(np.ascontiguousarray(predictions)),
        "index": torch.from_numpy(plan.pool.astype(np.int64)),
        "fold": torch.from_numpy(plan.fold_of.astype(np.int64)),
    }
    atomic_write(folder / OOF_PREDICTIONS, save(tensors))
    atomic_write_json(folder / OOF_TARGETS, {"k": plan.k, "seed": plan.seed, "targets": list(targets)})


def load_oof(run: Path) -> dict | None:
    """A run's out-of-fold predictions: {"predictions", "index", "fold", "targets", "k", "seed"}, or None
    when it was not trained with folds."""
    from safetensors.numpy import load_file

    folder = run / FOLDS
    if not (folder / OOF_PREDICTIONS).is_file() or not (folder / OOF_TARGETS).is_file():
        return None
    return {**load_file(str(folder / OOF_PREDICTIONS)), **json.loads((folder / OOF_TARGETS).read_text())}


AUTO_FOLDS = 5  # model.name auto below AUTO_FOLD_ROWS training rows: its candidates compared out of 5 folds
AUTO_FOLD_ROWS = 10_000


def auto_fold_count(train, task) -> int:
    """How many folds of the training split auto compares its candidates over: AUTO_FOLDS below
    AUTO_FOLD_ROWS training examples (fewer when the rarest class has fewer); 0 for a bigger split, whose
    validation split is big enough to compare on (randhie and Adult picked the same family by either), and
    where the split cannot be cut so (a streamed or weighted split, or a class with a single example): auto
    then compares on the validation split."""
    from modelfoundry.data.prepare import ArrayData

    if type(train) is not ArrayData or len(train) >= AUTO_FOLD_ROWS:
        return 0
    if not task.is_classifier:
        return AUTO_FOLDS if len(train) >= 2 * AUTO_FOLDS else 0
    rarest = int(np.bincount(train.targets.numpy()).astype(np.int64)[np.unique(train.targets.numpy())].min())
    return min(AUTO_FOLDS, rarest) if rarest >= 2 else 0


def out_of_fold_score(cfg, data, splits: dict, k: int, metric: str, train_one, device) -> dict:
    """One auto candidate scored by k-fold cross-validation of the training split: trained k times, each
    time on all but one fold (stopping early on the validation split, as the candidate's final model
    does), and `metric` computed once over the out-of-fold predictions of every training example, so the
    choice rests on all of them rather than on a small validation split. Folds are stratified (classes;
    quantile bins of a number) and seeded by the split's seed: every candidate sees the same folds.
    `train_one(cfg, data, splits)` trains one model and returns its Built. `train.max_minutes` is the
    candidate's budget for all k folds together: each fold may take what is left of it over the folds left.
    Returns {metric, "folds": k, "per_fold": [metric of each fold], "out_of_fold": {every validation
    number}, "seconds"}."""
    from dataclasses import replace

    import torch
    from sklearn.model_selection import StratifiedKFold

    from modelfoundry.data.prepare import ArrayData
    from modelfoundry.training.loop import predict_logits

    clock = time.perf_counter()
    train = splits["train"]
    strata = get_task(cfg.task).strata(train.targets.cpu().numpy())
    splitter = StratifiedKFold(k, shuffle=True, random_state=cfg.data.split.seed)
    outputs, per_fold, objective = None, [], None
    with warnings.catch_warnings():  # a regression's quantile bin smaller than k: still cut, less even
        warnings.simplefilter("ignore")
        cuts = list(splitter.split(np.zeros(len(train)), strata))
    for done, (kept, held) in enumerate(cuts):
        kept, held = (
            torch.from_numpy(kept).to(train.inputs.device),
            torch.from_numpy(held).to(train.inputs.device),
        )
        part = ArrayData(train.inputs[kept], train.targets[kept])
        out = ArrayData(train.inputs[held], train.targets[held])
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        fold_cfg = _fold_budget(cfg, (time.perf_counter() - clock) / 60, k - done)
        built = train_one(
            fold_cfg, replace(data, train=part.to(torch.device("cpu"))), {**splits, "train": part}
        )
        objective = built.objective
        predicted = predict_logits(built.model, out)
        per_fold.append(objective.metrics(predicted, out.targets)[metric])
        if outputs is None:
            outputs = torch.zeros(
                (len(train), *predicted.shape[1:]), dtype=predicted.dtype, device=predicted.device
            )
        outputs[held] = predicted
    every = objective.metrics(outputs, train.targets)
    return {
        metric: every[metric],
        "folds": k,
        "per_fold": per_fold,
        "out_of_fold": every,  # every validation number of the out-of-fold predictions
        "seconds": round(time.perf_counter() - clock, 2),
    }


def _fold_budget(cfg, spent_minutes: float, folds_left: int):
    """`cfg` with the minutes one fold may train: what is left of `train.max_minutes` (a candidate's
    budget for all its folds) over the folds left; unchanged without a budget. A fold ends after the
    epoch that passes its minutes, so it always trains one epoch."""
    if not cfg.train.max_minutes:
        return cfg
    minutes = max(cfg.train.max_minutes - spent_minutes, 0.0) / folds_left
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_minutes": max(minutes, 1e-3)})})


def simplest_within_error(scores: dict, metric: str, lower: bool, simplest_first) -> tuple[str, str]:
    """auto's choice among candidates scored on the same folds (`out_of_fold_score`): the best by `metric`,
    unless a simpler one (earlier in `simplest_first`) is within one standard error of it, the error of the
    mean of their per-fold differences (paired, so each fold's own difficulty cancels): the one-standard-
    error rule (Hastie, Tibshirani, Friedman, section 7.10). A tie goes to the first candidate. Over 10 seeds
    of four small tables it kept linear where a lucky fold split made the MLP look better, +1.0 point of
    R2 on diabetes and +0.35 of accuracy on wine, the same on breast_cancer, -0.05 on anes96 (bench/
    RESULTS.md, tables). Returns the name and, when the rule moved the choice, why in words."""
    sign = 1 if lower else -1
    names = list(scores)
    best = min(names, key=lambda n: (sign * scores[n][metric], names.index(n)))
    for name in [n for n in simplest_first if n in scores]:
        if name == best:
            break
        gaps = [sign * (a - b) for a, b in zip(scores[name]["per_fold"], scores[best]["per_fold"])]
        error = statistics.stdev(gaps) / np.sqrt(len(gaps))
        if statistics.fmean(gaps) <= error:
            return name, (
                f"{name}, simpler, is within one standard error of {best} (per-fold {metric} "
                f"{statistics.fmean(gaps):+.4f} ± {error:.4f})"
            )
    return best, ""
