"""Classification metrics from predicted probabilities, as plain JSON-ready dicts."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def calibration(probabilities: np.ndarray, targets: np.ndarray, bins: int = 15) -> tuple[float, dict]:
    """Expected calibration error (Guo et al. 2017) over equal-width confidence bins, and the bins."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == targets
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece, table = 0.0, {"bin_confidence": [], "bin_accuracy": [], "bin_count": []}
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        ece += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
        table["bin_confidence"].append(float(confidence[mask].mean()))
        table["bin_accuracy"].append(float(correct[mask].mean()))
        table["bin_count"].append(int(mask.sum()))
    return float(ece), table


def classification_metrics(probabilities: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict:
    """Metrics of one split.

    Args:
        probabilities: (N, C) class probabilities.
        targets: (N,) true class indices into `labels`.
    """
    predicted = probabilities.argmax(1)
    classes = list(range(len(labels)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        targets, predicted, labels=classes, zero_division=0
    )
    ece, reliability = calibration(probabilities, targets)
    out = {
        "n": int(len(targets)),
        "accuracy": float(skm.accuracy_score(targets, predicted)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "f1_weighted": float(
            skm.f1_score(targets, predicted, labels=classes, average="weighted", zero_division=0)
        ),
        "loss": float(skm.log_loss(targets, np.clip(probabilities, 1e-7, 1), labels=classes)),
        "ece": ece,
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": skm.confusion_matrix(targets, predicted, labels=classes).tolist(),
        "reliability": reliability,
    }
    if len(labels) == 2 and len(np.unique(targets)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(targets, probabilities[:, 1]))
    return out


def worst_mistakes(probabilities: np.ndarray, targets: np.ndarray, k: int = 24) -> list[int]:
    """Indices of wrong predictions, most confident first."""
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != targets)
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:k].tolist()
