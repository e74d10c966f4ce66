"""The fairness audit's numbers against fairlearn's on the same predictions, and its bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from modelfoundry.errors import UserError
from modelfoundry.evaluate.fairness import check_sensitive, report_section
from modelfoundry.tasks import get_task

fairlearn = pytest.importorskip("fairlearn.metrics")

CLASSIFIER, REGRESSION = get_task("tabular_classification"), get_task("tabular_regression")
SETTINGS = {"threshold": 0.1, "intersections": True}


def people(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Groups of very different sizes: race "C" has fewer than 30 people, so it is unreliable."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], n, p=[0.4, 0.6]),
            "race": rng.choice(["A", "B", "C"], n, p=[0.6, 0.35, 0.05]),
        }
    )


def classifier_outputs(n: int, classes: int, groups: pd.DataFrame, seed: int = 1):
    """Probabilities (N, C) that favour one sex, and true class indices (N,)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) + (groups["sex"].to_numpy() == "M")[:, None] * np.eye(classes)[1]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probabilities, rng.integers(0, classes, n)


def test_binary_audit_equals_fairlearn_per_group_and_in_every_gap():
    groups = people()
    probabilities, targets = classifier_outputs(len(groups), 2, groups)
    predicted = probabilities.argmax(1)
    audit = CLASSIFIER.fairness(probabilities, targets, groups, {"labels": ["no", "yes"]}, SETTINGS)
    assert audit["positive_label"] == "yes"
    for column in ("sex", "race"):
        frame = fairlearn.MetricFrame(
            metrics={
                "accuracy": skm.accuracy_score,
                "precision": lambda y, p: skm.precision_score(y, p, zero_division=0),
                "recall": lambda y, p: skm.recall_score(y, p, zero_division=0),
                "f1": lambda y, p: skm.f1_score(y, p, zero_division=0),
                "positive_rate": fairlearn.selection_rate,
                "fpr": fairlearn.false_positive_rate,
                "fnr": fairlearn.false_negative_rate,
            },
            y_true=targets,
            y_pred=predicted,
            sensitive_features=groups[column],
        )
        ours = audit["attributes"][column]
        for group, row in frame.by_group.iterrows():
            for metric, value in row.items():
                assert ours["groups"][group][metric] == pytest.approx(value, abs=1e-9)
            assert ours["groups"][group]["n"] == int((groups[column] == group).sum())
        for metric, value in frame.difference().items():
            assert ours["gaps"][f"{metric}_difference"] == pytest.approx(value, abs=1e-9)
        sensitive = groups[column]
        assert ours["gaps"]["demographic_parity_difference"] == pytest.approx(
            fairlearn.demographic_parity_difference(targets, predicted, sensitive_features=sensitive),
            abs=1e-9,
        )
        assert ours["gaps"]["demographic_parity_ratio"] == pytest.approx(
            fairlearn.demographic_parity_ratio(targets, predicted, sensitive_features=sensitive), abs=1e-9
        )
        assert ours["gaps"]["equalized_odds_difference"] == pytest.approx(
            fairlearn.equalized_odds_difference(targets, predicted, sensitive_features=sensitive), abs=1e-9
        )
    # the intersection is the audit of the two columns' groups joined
    both = fairlearn.MetricFrame(
        metrics=skm.accuracy_score,
        y_true=targets,
        y_pred=predicted,
        sensitive_features=groups[["sex", "race"]],
    )
    for (sex, race), value in both.by_group.items():
        assert audit["attributes"]["sex & race"]["groups"][f"{sex} & {race}"]["accuracy"] == pytest.approx(
            value, abs=1e-9
        )


def test_multiclass_gaps_are_the_worst_of_each_class_against_the_rest():
    groups = people()
    probabilities, targets = classifier_outputs(len(groups), 3, groups)
    predicted = probabilities.argmax(1)
    audit = CLASSIFIER.fairness(probabilities, targets, groups, {"labels": ["a", "b", "c"]}, SETTINGS)
    sex = audit["attributes"]["sex"]
    frame = fairlearn.MetricFrame(
        metrics=lambda y, p: skm.f1_score(y, p, average="macro", zero_division=0, labels=[0, 1, 2]),
        y_true=targets,
        y_pred=predicted,
        sensitive_features=groups["sex"],
    )
    assert sex["gaps"]["f1_macro_difference"] == pytest.approx(frame.difference(), abs=1e-9)
    one_vs_rest = [(targets == c, predicted == c) for c in range(3)]
    assert sex["gaps"]["demographic_parity_difference"] == pytest.approx(
        max(
            fairlearn.demographic_parity_difference(y, p, sensitive_features=groups["sex"])
            for y, p in one_vs_rest
        ),
        abs=1e-9,
    )
    assert sex["gaps"]["equalized_odds_difference"] == pytest.approx(
        max(
            fairlearn.equalized_odds_difference(y, p, sensitive_features=groups["sex"])
            for y, p in one_vs_rest
        ),
        abs=1e-9,
    )
    assert "positive_rate" not in sex["groups"]["F"]  # no one positive class among three


def test_regression_audit_gives_errors_per_group_in_the_targets_units():
    groups = people()
    rng = np.random.default_rng(2)
    truth = rng.normal(100, 10, len(groups))
    predictions = truth + 5 * (groups["sex"].to_numpy() == "M") + rng.normal(0, 1, len(groups))
    spec = {"target": {"mean": 100.0, "std": 10.0}}
    audit = REGRESSION.fairness(predictions, (truth - 100) / 10, groups, spec, SETTINGS)
    sex = audit["attributes"]["sex"]
    frame = fairlearn.MetricFrame(
        metrics={
            "rmse": skm.root_mean_squared_error,
            "mae": skm.mean_absolute_error,
            "mean_residual": lambda y, p: float(np.mean(p - y)),
        },
        y_true=truth,
        y_pred=predictions,
        sensitive_features=groups["sex"],
    )
    for metric, value in frame.difference().items():
        assert sex["gaps"][f"{metric}_difference"] == pytest.approx(value, abs=1e-9)
    assert sex["largest_gap"] == {
        "metric": "mean_residual_difference",
        "value": pytest.approx(5, abs=0.5),
        "flagged": True,
    }


def test_a_small_group_is_reported_as_unreliable_and_a_large_gap_flagged_in_the_report():
    groups = people()
    probabilities, targets = classifier_outputs(len(groups), 2, groups)
    audit = CLASSIFIER.fairness(probabilities, targets, groups, {"labels": ["no", "yes"]}, SETTINGS)
    race = audit["attributes"]["race"]
    assert race["unreliable_groups"] == ["C"] and race["groups"]["C"]["unreliable"] is True
    assert any("C of race have fewer than 30" in w for w in audit["warnings"])
    sex = audit["attributes"]["sex"]
    assert sex["largest_gap"]["flagged"] == (sex["largest_gap"]["value"] > 0.1)
    _anchor, heading, html = report_section(audit)
    assert (
        heading == "Fairness" and "C (unreliable)" in html and html.count("<img") == 3
    )  # a chart per column
    assert "demographic parity ratio" in html


def test_a_missing_sensitive_column_is_named_with_the_close_one():
    frame = pd.DataFrame({"sex": ["F", "M"], "race": ["A", "B"]})
    with pytest.raises(
        UserError, match=r"people.csv has no column 'rase'. Did you mean 'race'\?.*Its columns: sex, race"
    ):
        check_sensitive(frame, ["rase"], "people.csv")


def test_a_sensitive_column_of_one_group_is_an_error_naming_it():
    frame = pd.DataFrame({"sex": ["F", "F", "F"]})
    with pytest.raises(UserError, match=r"column 'sex' of people.csv holds one group only \('F'\)"):
        check_sensitive(frame, ["sex"], "people.csv")


def test_balance_weights_make_every_group_and_label_cell_weigh_the_same():
    import torch

    from modelfoundry.data.prepare import ArrayData
    from modelfoundry.training.weights import WeightedData, balance_weights

    groups = people()
    targets = np.random.default_rng(3).integers(0, 2, len(groups))
    cells = CLASSIFIER.balance_cells(targets, ["no", "yes"])
    weights, counts = balance_weights(groups["sex"], cells)
    assert set(counts) == {"F / no", "F / yes", "M / no", "M / yes"} and sum(counts.values()) == len(groups)
    totals = pd.Series(weights).groupby([groups["sex"].to_numpy(), cells]).sum()
    assert totals.to_numpy() == pytest.approx(np.full(4, len(groups) / 4))
    # reweighing: the labels become independent of sex, their overall mix kept (Kamiran & Calders 2012)
    weights, _ = balance_weights(groups["sex"], cells, "reweighing")
    assert weights.sum() == pytest.approx(len(groups), rel=1e-6)
    positive = pd.Series(weights * (cells == "yes")).groupby(groups["sex"].to_numpy()).sum()
    share = positive / pd.Series(weights).groupby(groups["sex"].to_numpy()).sum()
    assert share.to_numpy() == pytest.approx(np.full(2, (cells == "yes").mean()))
    # the weighted loss is the weighted mean of each example's loss; batches keep the split's shuffle
    data = WeightedData(ArrayData(np.random.default_rng(4).normal(size=(len(groups), 3)), targets), weights)
    inputs, batch_targets, batch_weights = next(data.batches(400, shuffle=True, generator=torch.Generator()))
    logits = torch.nn.Linear(3, 2)(inputs)
    each = torch.nn.functional.cross_entropy(logits, batch_targets, reduction="none")
    expected = (each * batch_weights).sum() / batch_weights.sum()
    objective = CLASSIFIER.objective_class()
    assert objective.loss(logits, batch_targets, batch_weights).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    assert objective.loss(logits, batch_targets).item() == pytest.approx(each.mean().item(), rel=1e-6)


def test_balance_groups_must_name_an_audited_column():
    from modelfoundry.config import load_config

    config = {
        "task": "tabular_classification",
        "data": {"source": "people.csv", "label": "y"},
        "train": {"balance_groups": "sex"},
        "evaluate": {"sensitive": ["race"]},
    }
    with pytest.raises(UserError, match=r"train.balance_groups: 'sex' is not a column of evaluate.sensitive"):
        load_config(config)


def test_sensitive_columns_of_streamed_rows_are_refused_before_reading(tmp_path):
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare

    pd.DataFrame({"x": [1.0, 2.0], "sex": ["F", "M"], "y": ["a", "b"]}).to_csv(
        tmp_path / "p.csv", index=False
    )
    config = {
        "task": "tabular_classification",
        "data": {"source": str(tmp_path / "p.csv"), "label": "y", "streaming": True},
        "evaluate": {"sensitive": ["sex"]},
    }
    cfg, base = load_config(config)
    with pytest.raises(
        UserError, match=r"evaluate.sensitive: .*p.csv would be streamed. Set data.streaming: false"
    ):
        prepare(cfg, base)
