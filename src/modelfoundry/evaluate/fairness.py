"""Fairness audit: the test split's numbers per group of each sensitive column (evaluate.sensitive), and
the gaps between groups, in metrics.json under `fairness` and in the report.

Per group, classifiers: size, accuracy, precision, recall, F1 (of the positive class when there are two
classes, macro-averaged over classes otherwise), and with two classes the positive rate, FPR and FNR.
Regression: size, RMSE, MAE and the mean residual (predicted - true). Gaps: each number's largest
difference between two groups; classifiers also get the demographic parity difference and ratio and the
equalized odds difference (with more than two classes: the worst over each class against the rest). The
largest difference is flagged against evaluate.fairness_threshold. Definitions follow fairlearn's
`MetricFrame(...).difference()`, `demographic_parity_*` and `equalized_odds_difference`, and a test
holds them to it; an undefined rate (no negatives in a group: FPR) is 0, as there.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from modelfoundry.errors import UserError, did_you_mean

FEW = 30  # a group with fewer examples than this is reported but flagged unreliable
JOIN = " & "  # an intersection's name: "sex & race", its groups "Female & White"


def check_sensitive(frame: pd.DataFrame, columns: list[str], origin: str, two_groups: bool = True) -> None:
    """Every sensitive column exists in `frame` (a source's table, or new data), with two groups or more
    unless `two_groups` is False (one source of several)."""
    have = [str(c) for c in frame.columns]
    for column in columns:
        if column not in have:
            raise UserError(
                f"evaluate.sensitive: {origin} has no column {column!r}.{did_you_mean(column, have)} "
                f"Its columns: {', '.join(have)}."
            )
        if not two_groups:
            continue
        groups = frame[column].astype(object).where(frame[column].notna(), "(missing)").astype(str).unique()
        if len(groups) < 2:
            raise UserError(
                f"evaluate.sensitive: column {column!r} of {origin} holds one group only ({groups[0]!r}), so "
                "there is nothing to compare. Name a column with two groups or more, or remove it."
            )


def group_columns(groups: pd.DataFrame, intersections: bool) -> dict[str, pd.Series]:
    """Each sensitive column, then (asked) each pair of them as one column of joined group names."""
    out = {name: groups[name] for name in groups.columns}
    if intersections:
        for a, b in combinations(list(groups.columns), 2):
            out[f"{a}{JOIN}{b}"] = groups[a] + JOIN + groups[b]
    return out


def audit(per_group, groups: pd.DataFrame, settings: dict) -> dict:
    """The whole audit: `per_group(mask) -> {metric: value}` scores one group's examples (the task's),
    `groups` (N, columns) their group names, settings {"threshold", "intersections"}."""
    threshold = settings.get("threshold", 0.1)
    out: dict = {"threshold": threshold, "attributes": {}, "warnings": []}
    for name, column in group_columns(groups, settings.get("intersections", False)).items():
        values = column.to_numpy()
        names = sorted(set(values.tolist()))
        if len(names) < 2:
            out["warnings"].append(
                f"fairness: {name} has one group only in this data ({names[0]}); not audited."
            )
            continue
        table = {g: per_group(values == g) for g in names}
        few = [g for g in names if table[g]["n"] < FEW]
        for g in few:
            table[g]["unreliable"] = True
        gaps = differences(table)
        largest = max(_flagged(gaps), key=lambda k: gaps[k])
        entry = {
            "groups": table,
            "gaps": gaps,
            "largest_gap": {"metric": largest, "value": gaps[largest], "flagged": gaps[largest] > threshold},
        }
        if few:
            entry["unreliable_groups"] = few
            out["warnings"].append(
                f"fairness: group(s) {', '.join(few)} of {name} have fewer than {FEW} examples here; "
                "their numbers are unreliable."
            )
        if entry["largest_gap"]["flagged"]:
            out["warnings"].append(
                f"fairness: {largest.replace('_', ' ')} of {gaps[largest]:.3f} between groups of {name} is "
                f"above evaluate.fairness_threshold {threshold:g}."
            )
        out["attributes"][name] = entry
    return out


def _flagged(gaps: dict) -> list[str]:
    """The gaps the threshold judges: demographic parity and equalized odds for classifiers, every number's
    difference for regression."""
    judged = [k for k in ("demographic_parity_difference", "equalized_odds_difference") if k in gaps]
    return judged or [k for k in gaps if k.endswith("_difference")]


def differences(table: dict) -> dict:
    """Largest minus smallest of each number over the groups (fairlearn's between_groups difference);
    the fairness gaps that a group's numbers carry in `_rates` join them."""
    rows = list(table.values())
    gaps = {}
    for metric in rows[0]:
        if metric in ("n", "unreliable") or metric.startswith("_"):
            continue
        values = [r[metric] for r in rows]
        gaps[f"{metric}_difference"] = float(max(values) - min(values))
    if "_selection" in rows[0]:  # classifiers: per class rates, one class against the rest
        selection = np.array([r.pop("_selection") for r in rows])  # (groups, classes)
        tpr, fpr = np.array([r.pop("_tpr") for r in rows]), np.array([r.pop("_fpr") for r in rows])
        spread = selection.max(0) - selection.min(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(selection.max(0) > 0, selection.min(0) / selection.max(0), 0.0)
        odds = np.maximum(tpr.max(0) - tpr.min(0), fpr.max(0) - fpr.min(0))
        # two classes: the positive class's (the other's are the same numbers)
        pick = slice(1, 2) if selection.shape[1] == 2 else slice(None)
        gaps["demographic_parity_difference"] = float(spread[pick].max())
        gaps["demographic_parity_ratio"] = float(ratio[pick].min())
        gaps["equalized_odds_difference"] = float(odds[pick].max())
    return gaps


def classification_groups(predicted: np.ndarray, targets: np.ndarray, classes: int):
    """per_group for classifiers: predicted and true class indices (N,)."""

    def per_group(mask: np.ndarray) -> dict:
        from sklearn import metrics as skm

        y, p = targets[mask], predicted[mask]
        binary = classes == 2
        average = {"average": "binary", "pos_label": 1} if binary else {"average": "macro"}
        labels = list(range(classes)) if not binary else None
        scores = skm.precision_recall_fscore_support(y, p, labels=labels, zero_division=0, **average)
        row = {"n": int(mask.sum()), "accuracy": float((y == p).mean())}
        suffix = "" if binary else "_macro"
        for metric, value in zip(("precision", "recall", "f1"), scores[:3]):
            row[metric + suffix] = float(value)
        selection = np.array([(p == c).mean() for c in range(classes)])
        tpr = np.array([_rate(p[y == c] == c) for c in range(classes)])
        fpr = np.array([_rate(p[y != c] == c) for c in range(classes)])
        if binary:
            row.update(positive_rate=float(selection[1]), fpr=float(fpr[1]), fnr=_rate(p[y == 1] != 1))
        return {**row, "_selection": selection, "_tpr": tpr, "_fpr": fpr}

    return per_group


def regression_groups(predicted: np.ndarray, truth: np.ndarray):
    """per_group for regression: predicted and true values (N,) in the target's units."""

    def per_group(mask: np.ndarray) -> dict:
        residual = predicted[mask] - truth[mask]
        return {
            "n": int(mask.sum()),
            "rmse": float(np.sqrt(np.mean(residual**2))),
            "mae": float(np.mean(np.abs(residual))),
            "mean_residual": float(np.mean(residual)),
        }

    return per_group


def _rate(hits: np.ndarray) -> float:
    """Share of True in `hits`; 0 when there are none to count (fairlearn's convention)."""
    return float(hits.mean()) if len(hits) else 0.0


def group_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Sensitive columns as group names: strings, "(missing)" for an empty cell, 1.0 read as "1"."""
    out = {}
    for name, column in frame.items():
        if pd.api.types.is_float_dtype(column) and (column.dropna() == column.dropna().round()).all():
            column = column.astype("Int64")
        out[name] = column.astype(object).where(column.notna(), "(missing)").astype(str).str.strip()
    return pd.DataFrame(out).reset_index(drop=True)


def new_data_groups(source, frame: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame:
    """The sensitive columns of `foundry evaluate --data` rows (`frame`: every column of the file, row for
    row as the task read them; None where the inputs are no table)."""
    if frame is None:
        raise UserError(
            f"--data: {source}: this model's run audited groups of {', '.join(columns)}, but its inputs are "
            "not rows of a table, so the groups cannot be read."
        )
    check_sensitive(frame, columns, f"--data {source}")
    return group_labels(frame[columns])


# ---- the report ------------------------------------------------------------------------------------


def report_section(fairness: dict) -> tuple[str, str, str]:
    """(anchor, heading, HTML): per sensitive column a table of its groups and a bar chart per number."""
    from modelfoundry.evaluate.report import _esc, _fmt

    parts = [
        f'<p class="muted">Test split, per group of each sensitive column (evaluate.sensitive). Gaps above '
        f"{fairness['threshold']:g} (evaluate.fairness_threshold) are flagged; groups of fewer than {FEW} "
        "examples are unreliable."
        + (f" Positive class: {_esc(fairness['positive_label'])}." if "positive_label" in fairness else "")
        + "</p>"
    ]
    for warning in fairness.get("warnings", []):
        parts.append(f'<div class="warn">{_esc(warning)}</div>')
    for name, entry in fairness["attributes"].items():
        groups = entry["groups"]
        metrics = [m for m in next(iter(groups.values())) if m not in ("n", "unreliable")]
        head = "".join(f"<th>{_esc(m.replace('_', ' '))}</th>" for m in ["examples", *metrics])
        rows = []
        for group, row in groups.items():
            bad = ' class="bad"' if row.get("unreliable") else ""
            note = " (unreliable)" if row.get("unreliable") else ""
            cells = "".join(f'<td class="num">{_fmt(row[m])}</td>' for m in metrics)
            rows.append(f'<tr{bad}><th>{_esc(group)}{note}</th><td class="num">{row["n"]}</td>{cells}</tr>')
        largest = entry["largest_gap"]
        gaps = "".join(
            f"<tr{' class=bad' if k == largest['metric'] and largest['flagged'] else ''}><th>"
            f'{_esc(k.replace("_", " "))}</th><td class="num">{_fmt(v)}</td></tr>'
            for k, v in entry["gaps"].items()
        )
        parts.append(
            f"<h3>{_esc(name)}</h3><table><tr><th>group</th>{head}</tr>{''.join(rows)}</table>"
            f"<table><tr><th>gap between groups</th><th>value</th></tr>{gaps}</table>"
            + _bars(name, groups, metrics)
        )
    return "fairness", "Fairness", "".join(parts)


def _bars(name: str, groups: dict, metrics: list[str]) -> str:
    """One small bar chart per number, a bar per group."""
    import matplotlib
    from matplotlib.figure import Figure

    from modelfoundry.evaluate.report import _PLOT_STYLE, _png_tag

    columns = min(4, len(metrics))
    rows = -(-len(metrics) // columns)
    names = list(groups)
    with matplotlib.rc_context(_PLOT_STYLE):
        fig = Figure(figsize=(3.2 * columns, 0.9 + 0.25 * len(names) * rows + 1.2 * rows))
        for i, metric in enumerate(metrics):
            ax = fig.add_subplot(rows, columns, i + 1)
            values = [groups[g][metric] for g in names]
            colours = ["#c81e1e" if groups[g].get("unreliable") else "#3f51b5" for g in names]
            ax.barh(range(len(names)), values, color=colours)
            ax.set_yticks(range(len(names)), [n[:24] for n in names] if i % columns == 0 else [])
            ax.invert_yaxis()
            ax.set_title(metric.replace("_", " "))
        fig.tight_layout()
        return _png_tag(fig, f"{name}: numbers per group")
