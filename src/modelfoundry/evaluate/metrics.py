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
    # macro averages over the classes in the true or predicted labels (as scikit-learn without `labels`,
    # and the training loop's val_f1_macro): data holding 3 of 10 classes is not scored 0 on the other 7
    present = np.isin(classes, np.concatenate([targets, predicted]))
    ece, reliability = calibration(probabilities, targets)
    out = {
        "n": len(targets),
        "accuracy": float(skm.accuracy_score(targets, predicted)),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
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
    if not present.all():  # what the macro averages leave out: no example and never predicted
        out["absent_classes"] = [str(label) for label, here in zip(labels, present) if not here]
    if len(labels) == 2 and len(np.unique(targets)) == 2:
        out["roc_auc"] = float(skm.roc_auc_score(targets, probabilities[:, 1]))
    return out


def absent_note(split: str, absent: list[str], classes: int) -> str:
    """What the CLI and the report say when some classes have no example in a split and no prediction."""
    shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
    return (
        f"{split}: {len(absent)} of {classes} classes have no example and no prediction ({shown}); "
        f"the macro averages are over the other {classes - len(absent)}."
    )


def worst_mistakes(probabilities: np.ndarray, targets: np.ndarray, k: int = 24) -> list[int]:
    """Indices of wrong predictions, most confident first."""
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != targets)
    return wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:k].tolist()


def regression_metrics(predictions: np.ndarray, values: np.ndarray, train_mean: float) -> dict:
    """Metrics of one split of a regression model, beside the baseline of predicting the training mean.

    Args:
        predictions, values: (N,) predicted and true values, in the target's units.
        train_mean: the training split's mean target, the baseline's constant prediction.
    """
    predictions, values = np.asarray(predictions, dtype=np.float64), np.asarray(values, dtype=np.float64)

    def scores(predicted: np.ndarray) -> dict:
        out = {
            "rmse": float(np.sqrt(skm.mean_squared_error(values, predicted))),
            "mae": float(skm.mean_absolute_error(values, predicted)),
            "r2": float(skm.r2_score(values, predicted)) if len(values) > 1 else None,
        }
        if np.any(values == 0):  # MAPE divides by the true value
            out["mape"] = None
        else:
            out["mape"] = float(np.mean(np.abs((predicted - values) / values)))
        return out

    out = {"n": len(values), **scores(predictions)}
    out["loss"] = out["rmse"] ** 2
    out["baseline"] = {"name": "predict the training mean", **scores(np.full_like(values, train_mean))}
    if out["mape"] is None:
        out["notes"] = ["mape is left out: some true values are 0, and it divides by them."]
    residuals = predictions - values
    out["residuals"] = {"mean": float(residuals.mean()), "std": float(residuals.std())}
    return out
