"""k-fold cross-validation (training/folds.py) and ensembles (ensemble.py), in this process: the folds
cover train+val once each and never the test split, a bad fold count gets one message naming it and the
fix, and the combiners weigh, stack and average members as their names say."""

from __future__ import annotations

import io
import json
import statistics

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from modelfoundry import train
from modelfoundry.config import load_config
from modelfoundry.data.prepare import prepare
from modelfoundry.ensemble import combine, fit_combiner, make_ensemble
from modelfoundry.errors import UserError
from modelfoundry.training.folds import FoldPlan, load_oof, paired_differences, summarise


def quiet() -> Console:
    return Console(file=io.StringIO())


def table(path, labels=("a", "b", "c"), per_class: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    k = np.repeat(np.arange(len(labels)), per_class)
    frame = pd.DataFrame({"x1": rng.normal(3 * k, 1), "x2": rng.normal(-k, 1)})
    frame["label"] = np.array(labels)[k]
    frame.sample(frac=1, random_state=seed).to_csv(path, index=False)
    return path


def tiny(source, **train_keys) -> dict:
    return {
        "task": "tabular_classification",
        "data": {"source": str(source), "label": "label"},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"epochs": 2, "precision": "fp32", **train_keys},
    }


def test_folds_cover_train_and_val_once_each_stratified_and_leave_the_test_split_alone():
    strata = np.repeat(["a", "b", "c"], 20)
    split = {"train": np.arange(0, 42), "val": np.arange(42, 48), "test": np.arange(48, 60)}
    plan = FoldPlan(3, seed=0, stratify=True, is_classifier=True)
    pooled = plan.cut(split, strata, np.repeat("train", 60))
    assert sorted(plan.pool.tolist()) == list(range(48))
    assert pooled["test"][48:].tolist() == list(range(48, 60))  # the pool, then the test split
    held = []
    for i in range(3):
        fold = plan.fold(i)(split, strata, np.repeat("train", 60))
        assert len(fold["test"]) == 0  # no fold is tested: the test split waits for the final model
        assert not set(fold["train"]) & set(fold["val"])
        assert not set(fold["train"]) & set(range(48, 60))
        counts = pd.Series(strata[fold["val"]]).value_counts()
        assert set(counts.index) == {"a", "b", "c"}  # stratified: every class in every fold
        held += fold["val"].tolist()
    assert sorted(held) == list(range(48))  # each train+val example validates exactly once
    final = plan.everything(split, strata, np.repeat("train", 60))
    assert sorted(final["train"].tolist()) == list(range(48)) and len(final["val"]) == 0


def test_more_folds_than_the_rarest_class_has_examples_names_the_class_and_the_fix():
    strata = np.array(["a"] * 30 + ["b"] * 4)
    split = {"train": np.arange(34), "val": np.arange(0), "test": np.arange(0)}
    with pytest.raises(UserError) as info:
        FoldPlan(5, 0, True, True).cut(split, strata, np.repeat("train", 34))
    message = str(info.value)
    assert "class 'b' has 4 example(s)" in message and "--folds 4 or fewer" in message


@pytest.mark.parametrize("folds", [1, 0])
def test_fewer_than_two_folds_is_refused_with_the_fix(folds):
    with pytest.raises(UserError) as info:
        load_config(
            {"task": "tabular_classification", "data": {"source": "builtin:wine"}}, [f"train.folds={folds}"]
        )
    assert "train.folds" in str(info.value) and "use 2 or more" in str(info.value)


def test_folds_ensemble_without_folds_says_to_add_them():
    with pytest.raises(UserError, match=r"add --folds 5"):
        load_config(
            {"task": "tabular_classification", "data": {"source": "builtin:wine"}},
            ["train.folds_ensemble=true"],
        )


def test_a_streamed_table_is_refused_under_folds(tmp_path):
    cfg, base = load_config(
        {
            **tiny(table(tmp_path / "t.csv")),
            "data": {"source": str(tmp_path / "t.csv"), "label": "label", "streaming": True},
        }
    )
    with pytest.raises(UserError, match=r"streamed .* Set data.streaming: false"):
        prepare(cfg, base, FoldPlan(3, 0, True, True).cut)


def test_resume_is_refused_under_folds_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    with pytest.raises(UserError, match=r"--resume does not continue a run with --folds 3: start it again"):
        train(tiny(table(tmp_path / "t.csv"), folds=3), resume=True, console=quiet())
    assert not (tmp_path / "runs").exists()


def test_the_summary_is_the_mean_and_sample_std_of_each_validation_number():
    folds = [
        {"fold": i + 1, "examples": 10, "accuracy": a, "best_epoch": 2} for i, a in enumerate([0.8, 0.9, 1.0])
    ]
    summary = summarise(folds, 3, 30, 0)
    assert summary["mean"]["accuracy"] == pytest.approx(0.9)
    assert summary["std"]["accuracy"] == pytest.approx(0.1)
    assert "best_epoch" not in summary["mean"]


def test_weighted_favours_the_member_that_is_right_and_stack_fixes_a_swapped_one():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 400)
    good = np.eye(2)[targets] * 0.8 + 0.1  # right, 90% sure
    noise = rng.dirichlet([1, 1], 400)  # says nothing
    weights = fit_combiner("weighted", [good, noise], targets)["weights"]
    assert weights[0] > 0.8 and weights.sum() == pytest.approx(1)
    swapped = good[:, ::-1]  # always wrong, but perfectly informative
    stacked = combine(fit_combiner("stack", [noise, swapped], targets), [noise, swapped])
    assert (stacked.argmax(1) == targets).mean() == 1.0
    mean = combine(fit_combiner("mean", [good, noise], targets), [good, noise])
    np.testing.assert_allclose(mean, (good + noise) / 2)


def test_stacked_values_are_a_linear_regression_on_the_members():
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    a, b = y + rng.normal(0, 0.1, 300), 2 * y + 5
    combined = combine(fit_combiner("stack", [a, b], y), [a, b])
    assert combined.shape == (300,) and np.abs(combined - y).max() < 1e-6


def test_folds_then_an_ensemble_of_a_run_with_other_labels_names_both_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    monkeypatch.delenv("FOUNDRY_DB", raising=False)
    folded = train(tiny(table(tmp_path / "abc.csv"), folds=3), console=quiet())
    assert set(folded.metrics["folds"]["std"]) >= {"accuracy", "f1_macro"}
    assert len(folded.metrics["folds"]["per_fold"]) == 3
    oof = load_oof(folded.path)
    assert oof["predictions"].shape == (48, 3) and len(oof["targets"]) == 48  # every train+val example
    other = train(tiny(table(tmp_path / "xy.csv", labels=("x", "y"))), console=quiet())
    with pytest.raises(UserError) as info:
        make_ensemble([folded.id, other.id], console=quiet())
    message = str(info.value)
    assert other.id in message and folded.id in message and "labels ['x', 'y']" in message
    with pytest.raises(UserError, match=r"member 'no-such-run'.*foundry models list"):
        make_ensemble([folded.id, "no-such-run"], console=quiet())
    regression = {"task": "tabular_regression", "data": {"source": "builtin:diabetes"}}
    numbers = train(
        {**regression, "model": {"name": "mlp", "hidden": [4]}, "train": {"epochs": 1}}, console=quiet()
    )
    with pytest.raises(UserError) as info:
        make_ensemble([other.id, numbers.id], console=quiet())
    assert f"{numbers.id} is a tabular_regression model, {other.id} a tabular_classification model" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("refs", "method", "phrase"),
    [
        (
            ["a", "b"],
            "median",
            "--method: 'median' is not a way to combine; use one of mean, weighted, stack",
        ),
        (["a"], "mean", "1 run given (a); an ensemble combines two or more"),
        (["a", "a"], "mean", "a given more than once"),
    ],
)
def test_an_ensemble_of_too_few_members_or_an_unknown_method_says_what_to_give(refs, method, phrase):
    with pytest.raises(UserError) as info:
        make_ensemble(refs, method, console=quiet())
    assert phrase in str(info.value)


def test_regression_folds_stratify_on_quantile_bins_even_when_a_bin_is_smaller_than_k():
    strata = np.array(["0"] * 20 + ["1"] * 20 + ["2"] * 2)  # the top bin holds 2 values, k is 5
    split = {"train": np.arange(42), "val": np.arange(0), "test": np.arange(0)}
    plan = FoldPlan(5, 0, True, is_classifier=False)
    plan.cut(split, strata, np.repeat("train", 42))
    assert np.bincount(plan.fold_of).tolist() == [9, 9, 8, 8, 8]  # every example in one fold, sizes even
    for i in range(5):  # the big bins spread over every fold
        assert set(strata[plan.pool[plan.fold_of == i]]) >= {"0", "1"}


def test_two_configs_on_the_same_folds_are_compared_fold_by_fold():
    """Fold difficulty moves both configs alike: 0.90 vs 0.88 on every fold is apart, though each config's
    own std (0.05) is wider than the gap; other folds (another seed) are not compared."""

    def folds(accuracies, seed=0):
        per_fold = [{"fold": i + 1, "examples": 20, "accuracy": a} for i, a in enumerate(accuracies)]
        return summarise(per_fold, len(per_fold), 100, seed)

    a = folds([0.85, 0.95, 0.90, 0.83, 0.97])
    b = folds([0.83, 0.93, 0.88, 0.81, 0.94])
    (line,) = paired_differences(("A", a), ("B", b))
    assert "val accuracy: A - B = +0.0220" in line and line.endswith("apart (2 standard errors)")
    assert not line.endswith("not apart (2 standard errors)")
    assert paired_differences(("A", a), ("B", folds([0.8] * 5, seed=1))) == []


def test_auto_compares_small_tables_out_of_folds_of_train_on_the_same_folds_for_every_candidate(tmp_path):
    from modelfoundry.runner import _train_one
    from modelfoundry.tasks import get_task
    from modelfoundry.training.folds import AUTO_FOLD_ROWS, auto_fold_count, out_of_fold_score

    cfg, base = load_config(tiny(table(tmp_path / "t.csv", per_class=12)))
    data = prepare(cfg, base)
    splits = {k: getattr(data, k) for k in ("train", "val", "test")}
    task = get_task(cfg.task)
    rarest = int(np.bincount(data.train.targets.numpy()).min())
    assert auto_fold_count(data.train, task) == min(5, rarest)
    from modelfoundry.data.prepare import ArrayData

    big = ArrayData(np.zeros((AUTO_FOLD_ROWS, 2)), np.arange(AUTO_FOLD_ROWS) % 2)
    assert auto_fold_count(big, task) == 0  # its validation split is big enough to compare on
    held = []

    def train_one(c, d, s):
        held.append(len(d.train))
        return _train_one(c, base, d, s, None, False, quiet(), torch.device("cpu"))[0]

    import torch

    score = out_of_fold_score(cfg, data, splits, 3, "val_loss", train_one, torch.device("cpu"))
    assert score["folds"] == 3 and len(score["per_fold"]) == 3 and score["val_loss"] > 0
    assert sum(len(data.train) - n for n in held) == len(data.train)  # every training row held out once
    again = out_of_fold_score(cfg, data, splits, 3, "val_loss", train_one, torch.device("cpu"))
    assert again["val_loss"] == pytest.approx(score["val_loss"])  # seeded folds and training: repeatable


def test_an_auto_candidates_minutes_are_shared_by_its_folds_not_given_to_each(tmp_path):
    """train.max_minutes (auto: 2 minutes a candidate) is the budget of all k folds together: a fold gets
    what is left over the folds left, so a candidate cannot take k times its minutes."""
    import torch

    from modelfoundry.runner import _train_one
    from modelfoundry.training.folds import out_of_fold_score

    cfg, base = load_config(tiny(table(tmp_path / "t.csv", per_class=12)), ["train.max_minutes=3"])
    data = prepare(cfg, base)
    splits = {k: getattr(data, k) for k in ("train", "val", "test")}
    given = []

    def train_one(c, d, s):
        given.append(c.train.max_minutes)
        return _train_one(c, base, d, s, None, False, quiet(), torch.device("cpu"))[0]

    out_of_fold_score(cfg, data, splits, 3, "val_loss", train_one, torch.device("cpu"))
    # 3 minutes over 3 folds; then what is left (these folds take seconds) over the 2 and the 1 left
    assert given == pytest.approx([1.0, 1.5, 3.0], abs=0.05)
    assert cfg.train.max_minutes == 3  # the candidate's own config is left as it was
    unlimited, _ = load_config(tiny(table(tmp_path / "u.csv", per_class=12)))
    given.clear()
    out_of_fold_score(unlimited, data, splits, 3, "val_loss", train_one, torch.device("cpu"))
    assert given == [None, None, None]  # no budget: none made up


def test_a_simpler_family_within_one_standard_error_of_the_best_is_kept_and_the_output_says_why():
    from modelfoundry.training.folds import simplest_within_error

    order = ("linear", "gbdt", "mlp")
    close = {  # mlp is better on average, but by less than its fold-to-fold spread
        "gbdt": {"val_loss": 0.30, "per_fold": [0.30, 0.31, 0.29, 0.30, 0.30]},
        "mlp": {"val_loss": 0.20, "per_fold": [0.10, 0.30, 0.15, 0.25, 0.20]},
        "linear": {"val_loss": 0.21, "per_fold": [0.21, 0.20, 0.22, 0.19, 0.23]},
    }
    name, why = simplest_within_error(close, "val_loss", True, order)
    assert name == "linear" and why.startswith("linear, simpler, is within one standard error of mlp")
    apart = {**close, "linear": {"val_loss": 0.25, "per_fold": [0.15, 0.35, 0.20, 0.30, 0.25]}}
    assert simplest_within_error(apart, "val_loss", True, order) == ("mlp", "")  # 0.05 worse on every fold
    accuracy = {
        n: {"val_accuracy": 1 - s["val_loss"], "per_fold": [1 - x for x in s["per_fold"]]}
        for n, s in apart.items()
    }
    assert simplest_within_error(accuracy, "val_accuracy", False, order) == ("mlp", "")  # higher is better


def test_the_final_gbdt_model_boosts_the_folds_median_best_round_not_every_round(tmp_path, monkeypatch):
    # gbdt counts boosting rounds in model.n_estimators, which train.epochs does not limit: without a
    # validation split to stop on, the final model would otherwise boost all 300 rounds
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    label = np.where(x[:, 0] + rng.normal(scale=1.5, size=120) > 0, "a", "b")  # a weak signal: overfits
    source = tmp_path / "t.csv"
    pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "label": label}).to_csv(source, index=False)
    config = {
        "task": "tabular_classification",
        "data": {"source": str(source), "label": "label"},
        "model": {"name": "gbdt", "n_estimators": 300},
    }
    train(config, ["train.folds=3"], run_dir=tmp_path / "run", console=quiet())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    bests = [fold["best_epoch"] for fold in metrics["folds"]["per_fold"]]
    median = round(statistics.median(bests))
    assert median < 300  # the folds stopped early
    trees = (tmp_path / "run" / "model" / "lightgbm.txt").read_text().count("\nTree=")
    assert trees == median  # two classes: one tree a round
    assert f"for {median} rounds (model.n_estimators" in metrics["folds"]["final"]
