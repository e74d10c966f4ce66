"""The reviewer's notes on a run's numbers (evaluate/review.py) and where report.html shows them."""

from __future__ import annotations

from modelfoundry.evaluate.report import write_report
from modelfoundry.evaluate.review import review
from modelfoundry.tasks import get_task

CLASSIFIER = get_task("tabular_classification")


def split(accuracy: float, n: int, support: dict[str, int]) -> dict:
    per_class = {
        label: {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": s} for label, s in support.items()
    }
    return {"accuracy": accuracy, "f1_macro": 0.9, "n": n, "per_class": per_class}


def test_the_issues_run_gets_all_four_notes_with_its_numbers():
    metrics = {
        "val": split(1.0, 30, {"ok": 20, "rare": 10}),
        "test": split(0.912, 60, {"ok": 56, "rare": 4}),
        "best_epoch": 2,
        "epochs_run": 20,
    }
    gap, early, rare, small = review(metrics, CLASSIFIER)
    assert gap.startswith("validation accuracy 1.000 (30 examples) against test accuracy 0.912 (60 examples)")
    assert "a gap of 0.088" in gap and "data.split.val" in gap
    assert early.startswith("the best validation score came at epoch 2 of 20, in the first 15% of training")
    assert rare.startswith("class 'rare' (4) has fewer than 10 test examples")
    assert small.startswith("the test set has only 60 examples (fewer than 100): each is 1.7% of a score")


def test_a_sound_run_gets_no_notes_and_the_edges_pass():
    metrics = {
        "val": split(0.93, 400, {"a": 200, "b": 200}),
        "test": split(0.90, 100, {"a": 90, "b": 10}),  # a gap of 0.03; 10 test examples and 100 are enough
        "best_epoch": 3,
        "epochs_run": 19,  # 3 > 15% of 19
    }
    assert review(metrics, CLASSIFIER) == []
    assert review({"test": {"n": 500}}, CLASSIFIER) == []  # `evaluate --data`: no validation, no history


def test_regression_compares_r2_and_has_no_classes():
    regression = get_task("tabular_regression")
    metrics = {"val": {"r2": 0.95, "rmse": 1.0, "n": 200}, "test": {"r2": 0.70, "rmse": 9.0, "n": 300}}
    (gap,) = review(metrics, regression)
    assert gap.startswith("validation r2 0.950 (200 examples) against test r2 0.700 (300 examples)")


def test_the_notes_stand_at_the_top_of_the_report_escaped(tmp_path):
    path = write_report(
        tmp_path / "report.html",
        title="run",
        metrics={"test": split(0.9, 50, {"<b>": 50})},
        history=[],
        data_report={},
        labels=["<b>"],
        mistakes=[],
        config={},
        warnings=["class '<b>' (4) has fewer than 10 test examples"],
    )
    page = path.read_text()
    notes = page.index('id="warnings"')
    assert notes < page.index('class="tiles"')  # above the numbers it qualifies
    assert "Before trusting these numbers" in page
    assert "class &#x27;&lt;b&gt;&#x27; (4)" in page
