"""Per-group decision thresholds (evaluate.threshold_policy): chosen on the validation split to equalise a
rate, kept in the package and applied to every prediction, with the gaps and the accuracy before and after
in the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import modelfoundry as mf
from modelfoundry.config import load_config
from modelfoundry.errors import UserError
from modelfoundry.evaluate import thresholds


def test_thresholds_bring_each_groups_rate_to_the_whole_splits_and_keep_the_order_within_a_group():
    rng = np.random.default_rng(0)
    groups = np.array(["A"] * 300 + ["B"] * 300, dtype=object)
    targets = rng.integers(0, 2, 600)
    # the model is confident about A's positives, timid about B's
    positive = np.clip(np.where(groups == "A", 0.35, 0.15) + 0.4 * targets + rng.normal(0, 0.12, 600), 0, 1)
    policy = thresholds.fit(positive, targets, groups, "tpr", "g")
    before = {g: thresholds.rate(positive[groups == g], targets[groups == g], 0.5, "tpr") for g in "AB"}
    adjusted = thresholds.apply(np.stack([1 - positive, positive], 1), groups, policy)
    after = {g: thresholds.rate(adjusted[groups == g, 1], targets[groups == g], 0.5, "tpr") for g in "AB"}
    assert abs(before["A"] - before["B"]) > 0.2 and abs(after["A"] - after["B"]) < 0.03
    assert policy["thresholds"]["A"] > 0.5 > policy["thresholds"]["B"]
    a = groups == "A"
    assert (np.argsort(adjusted[a, 1], kind="stable") == np.argsort(positive[a], kind="stable")).all()
    # a group the validation split never saw keeps 0.5
    unseen = thresholds.apply(np.array([[0.4, 0.6]]), np.array([None], dtype=object), policy)
    assert unseen[0, 1] == pytest.approx(0.6)


def people(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.normal(size=rows).round(3), "sex": rng.choice(["F", "M"], rows)})
    frame["label"] = np.where(
        frame["x"] + 0.8 * (frame["sex"] == "M") + rng.normal(0, 0.6, rows) > 0.6, "yes", "no"
    )
    return frame


def test_a_run_fits_thresholds_reports_before_and_after_and_its_package_applies_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))  # the registry goes there, not into ./runs
    people(600, 0).to_csv(tmp_path / "people.csv", index=False)
    config = {
        "task": "tabular_classification",
        "data": {
            "source": str(tmp_path / "people.csv"),
            "label": "label",
            "split": {"val": 0.3, "test": 0.3},
        },
        "model": {"name": "gbdt", "n_estimators": 40},
        "evaluate": {
            "sensitive": ["sex"],
            "threshold_policy": {"sensitive": "sex", "equalize": "positive_rate"},
        },
    }
    mf.train(config, run_dir=tmp_path / "run", console=Console(quiet=True))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    policy = metrics["threshold_policy"]
    before, after = policy["test"]["before"], policy["test"]["after"]
    assert set(policy["thresholds"]) == {"F", "M"} and policy["thresholds"]["M"] > policy["thresholds"]["F"]
    sex = "demographic_parity_difference"
    assert after["gaps"]["sex"][sex] < before["gaps"]["sex"][sex] / 2
    assert after["accuracy"] < before["accuracy"] + 0.02  # the report shows what the fairness costs
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Per-group thresholds" in report and "demographic parity difference" in report

    rows = [{"x": 0.3, "sex": "F"}, {"x": 0.3, "sex": "M"}, {"x": 0.3, "sex": "X"}]
    predictor = mf.load(tmp_path / "run")
    given = predictor.predict_proba(rows)[:, 1]
    raw = np.stack([predictor.model(x[None]).softmax(1)[0, 1].item() for x in predictor.encode(rows)])
    for p, q, group in zip(given, raw, ["F", "M", None]):  # 0.5 of the answer is the group's threshold
        assert (p >= 0.5) == (q >= policy["thresholds"].get(group, 0.5))
    assert given[2] == pytest.approx(raw[2], abs=1e-6)  # a group it never saw keeps the model's own


def test_a_threshold_policy_needs_an_audited_category_column_of_a_two_class_table_model(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    base = {"task": "tabular_classification", "data": {"source": "people.csv", "label": "label"}}
    with pytest.raises(UserError, match="'sex' is not a column of evaluate.sensitive"):
        load_config({**base, "evaluate": {"threshold_policy": {"sensitive": "sex"}}})
    with pytest.raises(UserError, match="equalize"):
        load_config(
            {
                **base,
                "evaluate": {
                    "sensitive": ["sex"],
                    "threshold_policy": {"sensitive": "sex", "equalize": "tnr"},
                },
            }
        )
    people(200, 1).to_csv(tmp_path / "people.csv", index=False)
    config = {
        **base,
        "data": {"source": str(tmp_path / "people.csv"), "label": "label"},
        "model": {"name": "gbdt", "n_estimators": 5},
        "evaluate": {"sensitive": ["x"], "threshold_policy": {"sensitive": "x"}},
    }
    with pytest.raises(UserError, match="'x' is not a category column the model reads \\(sex\\)"):
        mf.train(config, run_dir=tmp_path / "run", console=Console(quiet=True))
