"""Evaluation metrics on small hand-made examples whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from modelfoundry.evaluate.metrics import calibration, classification_metrics, worst_mistakes


def one_hot(indices, n) -> np.ndarray:
    """(N, n) float32 probabilities, as a model's softmax gives them."""
    return np.eye(n, dtype=np.float32)[indices]


# true:      0  0  1  1  2  2
# predicted: 0  1  1  1  2  0
TARGETS = np.array([0, 0, 1, 1, 2, 2])
PREDICTED = np.array([0, 1, 1, 1, 2, 0])
LABELS = ["ant", "bee", "cat"]


def test_hand_made_three_class_example():
    probabilities = one_hot(PREDICTED, 3) * 0.7 + 0.1
    m = classification_metrics(probabilities, TARGETS, LABELS)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["ant"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["bee"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert m["per_class"]["cat"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["loss"] == pytest.approx(-(4 * math.log(0.8) + 2 * math.log(0.1)) / 6)
    assert "roc_auc" not in m  # only for two classes
    json.dumps(m)  # JSON-ready: plain floats, ints and lists


def test_class_never_predicted_has_zero_precision_not_nan():
    probabilities = one_hot([0, 0, 0, 0], 2)
    m = classification_metrics(probabilities, np.array([0, 0, 1, 1]), ["no", "yes"])
    assert m["per_class"]["yes"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["accuracy"] == 0.5


def test_roc_auc_for_binary():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.35, 0.65], [0.2, 0.8]])
    m = classification_metrics(probabilities, np.array([0, 1, 0, 1]), ["no", "yes"])
    # positives score 0.4 and 0.8, negatives 0.1 and 0.65: 3 of 4 pairs ordered correctly
    assert m["roc_auc"] == pytest.approx(0.75)


def test_no_roc_auc_when_only_one_class_is_present():
    m = classification_metrics(one_hot([0, 1], 2), np.array([1, 1]), ["no", "yes"])
    assert "roc_auc" not in m


def test_labels_absent_from_the_split_still_appear():
    m = classification_metrics(one_hot([0, 1], 3), np.array([0, 1]), LABELS)
    assert list(m["per_class"]) == LABELS
    assert m["per_class"]["cat"]["support"] == 0
    assert np.array(m["confusion_matrix"]).shape == (3, 3)


def test_perfect_one_hot_predictions_are_perfectly_calibrated():
    m = classification_metrics(one_hot(TARGETS, 3), TARGETS, LABELS)
    assert m["ece"] == 0.0
    assert m["accuracy"] == 1.0
    assert m["reliability"]["bin_count"] == [6]
    assert m["reliability"]["bin_accuracy"] == [1.0]


def test_overconfidence_is_the_gap_between_confidence_and_accuracy():
    # every prediction 80% sure, half of them right -> ECE 0.3
    probabilities = np.array([[0.8, 0.2]] * 4)
    ece, table = calibration(probabilities, np.array([0, 0, 1, 1]))
    assert ece == pytest.approx(0.3)
    assert table["bin_confidence"] == pytest.approx([0.8]) and table["bin_accuracy"] == [0.5]


def test_ece_weights_bins_by_their_share():
    # 2 examples at 0.95 both right (gap 0.05); 2 at 0.6, one right (gap 0.1) -> 0.5*0.05 + 0.5*0.1
    probabilities = np.array([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4], [0.4, 0.6]])
    ece, table = calibration(probabilities, np.array([0, 1, 0, 0]))
    assert ece == pytest.approx(0.075)
    assert sorted(table["bin_count"]) == [2, 2]


def test_worst_mistakes_are_wrong_and_most_confident_first():
    probabilities = np.array(
        [
            [0.9, 0.1],  # 0: right
            [0.3, 0.7],  # 1: wrong, 0.7
            [0.05, 0.95],  # 2: wrong, 0.95
            [0.6, 0.4],  # 3: wrong, 0.6
            [0.2, 0.8],  # 4: right
        ]
    )
    targets = np.array([0, 0, 0, 1, 1])
    assert worst_mistakes(probabilities, targets) == [2, 1, 3]
    assert worst_mistakes(probabilities, targets, k=2) == [2, 1]
    assert worst_mistakes(one_hot(targets, 2), targets) == []


def test_macro_scores_are_over_the_classes_in_the_data_and_the_absent_ones_are_named():
    """Data holding 3 of 10 classes: the 7 others (no example, never predicted) are not averaged in as 0."""
    labels = [f"c{i}" for i in range(10)]
    targets = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2, 2, 3])  # c3 is predicted once, with no example of it
    m = classification_metrics(one_hot(predicted, 10), targets, labels)
    f1 = {k: v["f1"] for k, v in m["per_class"].items()}
    assert m["f1_macro"] == pytest.approx(np.mean([f1["c0"], f1["c1"], f1["c2"], f1["c3"]]))
    assert m["f1_macro"] == pytest.approx(
        skm_f1_macro(targets, predicted)
    )  # what scikit-learn averages over without `labels`
    assert m["recall_macro"] == pytest.approx((1 + 1 + 0.75 + 0) / 4)
    assert m["absent_classes"] == ["c4", "c5", "c6", "c7", "c8", "c9"]
    assert m["accuracy"] == pytest.approx(7 / 8)


def test_no_absent_classes_key_when_every_class_is_there():
    m = classification_metrics(one_hot(PREDICTED, 3) * 0.7 + 0.1, TARGETS, LABELS)
    assert "absent_classes" not in m


def skm_f1_macro(targets, predicted) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(targets, predicted, average="macro"))
