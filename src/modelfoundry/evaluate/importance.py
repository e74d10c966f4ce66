"""Global explanations of a table model: permutation importance of each input column on the test split
(Breiman 2001; scikit-learn's `permutation_importance`). A column's values are shuffled across the rows,
the rows go through the model as users' rows do (encoded by the package, so a category's one-hot
features move together and the column is named as in the user's table), and the drop in the task's
metric is the column's importance; repeated, its spread says how far to trust the order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

REPEATS = 5
MAX_ROWS = 5000  # a sample of a larger test split: each column costs `repeats` predictions of them


def permutation_importance(
    predict: Callable,
    inputs,
    names: list[str],
    shuffled: Callable,
    score: Callable[[np.ndarray], float],
    metric: str,
    higher_is_better: bool,
    repeats: int = REPEATS,
    seed: int = 0,
) -> dict:
    """{"metric", "baseline", "repeats", "rows", "columns": {name: {"mean", "std", "drops"}}}, columns
    most important first. `predict`: inputs -> predictions; `shuffled(inputs, name, order)`: the inputs
    with column `name`'s values taken in row order `order`; `score`: predictions -> the metric on the rows'
    targets. A drop is how much worse the metric gets with the column shuffled (negative: better)."""
    rng = np.random.default_rng(seed)
    baseline = score(predict(inputs))
    rows = len(inputs)
    sign = 1.0 if higher_is_better else -1.0
    columns = {}
    for name in names:
        drops = [
            sign * (baseline - score(predict(shuffled(inputs, name, rng.permutation(rows)))))
            for _ in range(repeats)
        ]
        columns[str(name)] = {"mean": float(np.mean(drops)), "std": float(np.std(drops)), "drops": drops}
    ranked = dict(sorted(columns.items(), key=lambda kv: -kv[1]["mean"]))
    return {"metric": metric, "baseline": baseline, "repeats": repeats, "rows": rows, "columns": ranked}


def shuffled_frame(frame: pd.DataFrame, name: str, order: np.ndarray) -> pd.DataFrame:
    """A table with one column's values in another row order."""
    return frame.assign(**{name: frame[name].to_numpy()[order]})


def shuffled_block(features: np.ndarray, block: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Encoded rows (N, F) with one column's features `block` in another row order: the same as encoding
    the table with that column shuffled, for an encoder that encodes each column by itself, row by row."""
    out = features.copy()
    out[:, block] = features[order][:, block]
    return out


def sample_rows(count: int, seed: int = 0) -> np.ndarray:
    """Which test rows the importance reads: all of them, or MAX_ROWS of them, seeded, in order."""
    if count <= MAX_ROWS:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, MAX_ROWS, replace=False))


def report_section(importance: dict) -> tuple[str, str, str]:
    """(anchor, heading, HTML): a bar per column, its spread over the repeats as an error bar."""
    import matplotlib
    from matplotlib.figure import Figure

    from modelfoundry.evaluate.report import _PLOT_STYLE, _esc, _png_tag

    columns = importance["columns"]
    names = list(columns)
    with matplotlib.rc_context(_PLOT_STYLE):
        fig = Figure(figsize=(7, 0.9 + 0.28 * len(names)))
        ax = fig.add_subplot()
        ax.barh(
            range(len(names)),
            [columns[n]["mean"] for n in names],
            xerr=[columns[n]["std"] for n in names],
            color="#3f51b5",
            capsize=3,
        )
        ax.set_yticks(range(len(names)), [n[:30] for n in names])
        ax.invert_yaxis()
        ax.set_xlabel(f"drop in test {importance['metric']} when the column is shuffled")
        fig.tight_layout()
        plot = _png_tag(fig, "permutation importance of each column")
    caption = (
        f'<p class="muted">Each column shuffled {importance["repeats"]} times over {importance["rows"]} test '
        f"rows; the bar is the mean drop in {_esc(importance['metric'])} from {importance['baseline']:.4g}, "
        "the line its spread (standard deviation). Near zero or below: the model does not rely on it.</p>"
    )
    return "importance", "Column importance", plot + caption
