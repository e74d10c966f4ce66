"""Per-group decision thresholds (evaluate.threshold_policy): fairness mitigation after training, for a
two-class table model (Hardt, Price & Srebro 2016 equalise rates by group-specific thresholds; this is the
deterministic form, one threshold per group, without their randomisation).

On the validation split, each group of the policy's column gets the threshold on the positive class's
probability at which its chosen rate (tpr, fpr or positive rate) comes closest to the rate of the whole
split at the usual 0.5. The thresholds are kept in the package, and `Predictor.run` applies them to every
prediction: each probability is moved on the logit scale so that 0.5 falls at its group's threshold
(p' = sigmoid(logit p - logit t)), so the label, the served answer and every metric follow the threshold
while the order of the probabilities within a group is kept. An input whose group the validation split did
not hold keeps 0.5.
"""

from __future__ import annotations

import numpy as np

from modelfoundry.errors import UserError

EPS = 1e-6


def rate(positive: np.ndarray, targets: np.ndarray, threshold: float, equalize: str) -> float:
    """The share the policy equalises at `threshold`: of the true positives (tpr), of the true negatives
    (fpr), or of every example (positive_rate), that the model calls positive."""
    called = positive >= threshold
    among = {"tpr": targets == 1, "fpr": targets == 0, "positive_rate": np.ones_like(called)}[equalize]
    return float(called[among].mean()) if among.any() else 0.0


def fit(positive: np.ndarray, targets: np.ndarray, groups: np.ndarray, equalize: str, column: str) -> dict:
    """Thresholds (validation split): positive (N,) the positive class's probability, targets (N,) 0 or 1,
    groups (N,) each example's group (None: not a known category). Returns the policy the package keeps."""
    goal = rate(positive, targets, 0.5, equalize)
    thresholds = {}
    for group in sorted({g for g in groups.tolist() if g is not None}):
        mask = groups == group
        candidates = np.unique(np.concatenate([[0.5], np.clip(positive[mask], EPS, 1 - EPS)]))
        misses = np.array([abs(rate(positive[mask], targets[mask], t, equalize) - goal) for t in candidates])
        best = np.flatnonzero(misses <= misses.min() + 1e-12)
        thresholds[group] = float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])  # nearest 0.5
    return {"column": column, "equalize": equalize, "target_rate": goal, "thresholds": thresholds}


def apply(probabilities: np.ndarray, groups: np.ndarray, policy: dict) -> np.ndarray:
    """Probabilities (N, 2) moved so that 0.5 falls at each input's group threshold (unknown groups: 0.5)."""
    t = np.array([policy["thresholds"].get(g, 0.5) for g in groups.tolist()], dtype=np.float64)
    p = np.clip(probabilities[:, 1].astype(np.float64), EPS, 1 - EPS)
    shifted = 1 / (1 + np.exp(-(np.log(p / (1 - p)) - np.log(t / (1 - t)))))
    return np.stack([1 - shifted, shifted], 1).astype(probabilities.dtype)


def check_policy(labels: list[str]) -> None:
    if len(labels) != 2:
        raise UserError(
            f"evaluate.threshold_policy: a threshold decides between two classes; this model has "
            f"{len(labels)} ({', '.join(labels[:5])}). Remove evaluate.threshold_policy."
        )


GAPS = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference")


def compare(before: tuple[dict, dict], after: tuple[dict, dict], column: str) -> dict:
    """What the report and metrics.json show, each of (metrics, fairness audit) before and after: accuracy,
    every audited column's gaps, and the policy column's rates per group."""
    out = {}
    for name, (metrics, fairness) in {"before": before, "after": after}.items():
        attributes = fairness["attributes"]
        out[name] = {
            "accuracy": metrics["accuracy"],
            "f1_macro": metrics["f1_macro"],
            "gaps": {c: {k: entry["gaps"][k] for k in GAPS} for c, entry in attributes.items()},
            "rates": {
                g: {k: row[k] for k in ("positive_rate", "recall", "fpr")}
                for g, row in attributes[column]["groups"].items()
            },
        }
    return out


def report_section(policy: dict) -> tuple[str, str, str]:
    """(anchor, heading, HTML): the thresholds, then accuracy and gaps before and after, side by side."""
    from modelfoundry.evaluate.report import _esc, _fmt

    comparison = policy["test"]
    lines = [
        (k.replace("_", " "), comparison["before"][k], comparison["after"][k])
        for k in ("accuracy", "f1_macro")
    ]
    lines += [
        (f"{column}: {k.replace('_', ' ')}", gaps[k], comparison["after"]["gaps"][column][k])
        for column, gaps in comparison["before"]["gaps"].items()
        for k in GAPS
    ]
    rows = "".join(
        f'<tr><th>{_esc(name)}</th><td class="num">{_fmt(b)}</td><td class="num">{_fmt(a)}</td>'
        f'<td class="num">{a - b:+.4f}</td></tr>'
        for name, b, a in lines
    )
    rates = "".join(
        f"<tr><th>{_esc(g)}</th><td class='num'>{_fmt(policy['thresholds'].get(g, 0.5))}</td>"
        + "".join(
            f"<td class='num'>{_fmt(comparison[w]['rates'][g][k])}</td>"
            for k in ("positive_rate", "recall", "fpr")
            for w in ("before", "after")
        )
        + "</tr>"
        for g in comparison["before"]["rates"]
    )
    rate_head = "".join(
        f"<th>{k} {w}</th>" for k in ("positive rate", "tpr", "fpr") for w in ("before", "after")
    )
    body = (
        f"<p>Each group of <b>{_esc(policy['column'])}</b> gets the decision threshold at which its "
        f"{_esc(policy['equalize'])} on the validation split comes closest to the whole split's "
        f"({policy['target_rate']:.4f} at 0.5). Test split, the model's own decisions (threshold 0.5) "
        "against the thresholds' (the package applies them to every prediction):</p>"
        f"<table><tr><th></th><th>before</th><th>after</th><th>change</th></tr>{rows}</table>"
        f"<table><tr><th>group</th><th>threshold</th>{rate_head}</tr>{rates}</table>"
    )
    return "thresholds", "Per-group thresholds", body
