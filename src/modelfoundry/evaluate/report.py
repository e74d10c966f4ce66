"""One self-contained report.html per run: metrics, plots, worst mistakes, data checks and config.

Everything is embedded (plots as base64 PNG, CSS inline), so the file can be mailed, attached
to a ticket or opened offline and still shows everything. Every string that came from the user
(labels, column names, file paths, text, config) goes through `html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import yaml
from matplotlib.figure import Figure  # a bare Figure needs no pyplot, no GUI backend, no close()
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
from PIL import Image

from modelfoundry.evaluate.metrics import absent_note
from modelfoundry.runfiles import atomic_write

MAX_MISTAKES = 24
THUMBNAIL_PX = 64  # tiny images (8x8 digits) are scaled up to at least this size to be visible
MAX_ANNOTATED_CLASSES = 20  # above this the count labels in the confusion matrix overlap
MAX_LISTED = 20  # unreadable paths, list items: show this many and say how many more
MAX_TEXT_CHARS = 600

# Labels such as "$5-$10" would otherwise be parsed as mathtext and crash the PNG rendering.
_PLOT_STYLE = {"text.parse_math": False, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3}
_SPLIT_ORDER = ("test", "val", "train")
_OVERALL_METRICS = (
    ("n", "Examples"),
    ("accuracy", "Accuracy"),
    ("precision_macro", "Precision (macro)"),
    ("recall_macro", "Recall (macro)"),
    ("f1_macro", "F1 (macro)"),
    ("f1_weighted", "F1 (weighted)"),
    ("roc_auc", "ROC-AUC"),
    ("ece", "Calibration error (ECE)"),
    ("rmse", "RMSE"),
    ("mae", "MAE"),
    ("r2", "R2"),
    ("mape", "MAPE"),
    ("baseline.rmse", "RMSE of predicting the training mean"),
    ("baseline.r2", "R2 of predicting the training mean"),
    ("loss", "Loss"),
)
_DATA_KEYS = (
    "columns",
    "n_examples",
    "splits",
    "class_counts",
    "missing",
    "duplicates",
    "leakage",
    "unreadable",
    "warnings",
    "pii",
    "pii_dropped_rows",
    "tokens",
    "truncated",
    "empty_texts",
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2933;
       background: #f5f7fa; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { margin: 0 0 4px; font-size: 1.8em; }
h2 { margin-top: 0; font-size: 1.25em; border-bottom: 1px solid #e4e7eb; padding-bottom: 6px; }
h3 { font-size: 1em; margin: 16px 0 6px; }
section { background: #fff; border-radius: 8px; padding: 18px 22px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
nav a { margin-right: 14px; color: #3e4c59; font-size: .9em; }
.tiles { display: flex; flex-wrap: wrap; gap: 14px; margin: 16px 0; }
.tile { background: #eef2ff; border-radius: 8px; padding: 12px 20px; min-width: 150px; }
.tile .value { font-size: 2em; font-weight: 600; color: #243b8a; }
.tile .name { font-size: .85em; color: #52606d; }
table { border-collapse: collapse; font-size: .9em; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f5f7fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fde8e8; }
.warn { background: #fff7e0; border-left: 4px solid #f0b429; padding: 8px 14px; margin: 8px 0; }
.muted { color: #7b8794; font-size: .9em; }
img.plot { max-width: 100%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
.card { border: 1px solid #e4e7eb; border-radius: 6px; padding: 8px; font-size: .85em; overflow: auto; }
.card img { image-rendering: pixelated; display: block; margin: 0 auto 6px; max-width: 100%; }
.card .text { white-space: pre-wrap; word-break: break-word; max-height: 180px; overflow: auto; }
.card table { font-size: .95em; margin: 0 0 6px; }
.card .tok { border-radius: 3px; }
.card .bar { margin: 2px 0 4px; overflow-wrap: anywhere; }
pre { background: #f5f7fa; padding: 12px; border-radius: 6px; overflow: auto; font-size: .85em; }
"""


def write_report(
    path: str | Path,
    *,
    title: str,
    metrics: dict,
    history: list[dict],
    data_report: dict,
    labels: list[str],
    mistakes: list[dict],
    config: dict,
    sections: list[tuple[str, str, str]] | None = None,
    warnings: list[str] | None = None,
) -> Path:
    """Write a self-contained report.html: plots embedded as base64 PNG, nothing external, no network.

    Args:
        path: Where to write the HTML file; parent folders are created.
        title: Shown as the page title and heading.
        metrics: {"test": {...}, "val": {...}}; each split has accuracy, precision_macro, recall_macro,
            f1_macro, f1_weighted, ece, loss, optional roc_auc, per_class {label: {precision, recall, f1,
            support}}, confusion_matrix (rows = true, columns = predicted, in `labels` order) and optional
            reliability {bin_confidence, bin_accuracy, bin_count}. Either split may be missing.
        history: One dict per epoch (epoch, train_loss, val_loss, val_*, lr, seconds); empty skips the
            learning curves.
        data_report: Data checks (n_examples, splits, class_counts, missing, duplicates, leakage,
            unreadable, warnings); unknown keys are shown as key/value tables.
        labels: Class names in the order used by the confusion matrix.
        mistakes: Worst mistakes, worst first: {true, pred, confidence} plus one of image (float array in
            [0, 1], shape (H, W) or (C, H, W)), row (column -> value) or text; with `explained` (HTML of
            the input with its attributions, evaluate/explain.py) shown instead, and `explains` under it.
        config: The resolved config, shown as YAML.
        sections: The task's own sections (anchor, heading, HTML), shown after the learning curves.
        warnings: What to know before trusting the numbers (evaluate/review.py), shown above them.

    Returns:
        The path of the written file.
    """
    path = Path(path)
    # Keep only split dicts: callers sometimes pass their whole metrics.json ("history", "data", ...).
    metrics = {
        split: values for split, values in (metrics or {}).items() if isinstance(values, Mapping) and values
    }
    with matplotlib.rc_context(_PLOT_STYLE):
        sections = [
            ("curves", "Learning curves", _learning_curves(history or [])),
            *(sections or []),
            ("confusion", "Confusion matrix", _confusion_matrices(metrics, labels)),
            ("per-class", "Per-class metrics", _per_class_table(metrics, labels)),
            ("calibration", "Calibration", _reliability(metrics)),
            ("mistakes", "Worst mistakes", _mistakes(mistakes or [])),
            ("data", "Data report", _data_report(data_report or {})),
            ("config", "Config", f"<pre>{_esc(_to_yaml(config))}</pre>" if config else ""),
        ]
    sections = [(anchor, heading, body) for anchor, heading, body in sections if body]
    nav = "".join(f'<a href="#{anchor}">{heading}</a>' for anchor, heading, _ in sections)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><main>"
        f"<section><h1>{_esc(title)}</h1>{_review_notes(warnings or [])}{_headline(metrics)}<nav>{nav}</nav>"
        "</section>"
        + "".join(
            f'<section id="{anchor}"><h2>{heading}</h2>{body}</section>' for anchor, heading, body in sections
        )
        + "</main></body></html>\n"
    )
    atomic_write(path, page)  # a reader never sees a half-written report
    return path


# ---- formatting helpers ------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _is_number(value) and value > 0


def _fmt(value: Any, spec: str = ".3f") -> str:
    """Format a metric; missing or NaN values show as a dash rather than 'nan'."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return f"{value:,}"
    return format(value, spec) if _is_number(value) else "—"


def _fmt_value(value: Any) -> str:
    """Escaped HTML for an arbitrary user value in a table cell."""
    if value is None:
        return "—"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return _fmt(value, ".4g")
    if isinstance(value, Mapping):
        return _kv_table(value)
    if isinstance(value, (list, tuple)):
        more = f" … and {len(value) - MAX_LISTED} more" if len(value) > MAX_LISTED else ""
        return _esc(", ".join(str(v) for v in value[:MAX_LISTED]) + more)
    return _esc(value)


def _kv_table(mapping: Mapping, is_bad: Callable[[Any, Any], bool] = lambda key, value: False) -> str:
    rows = "".join(
        f"<tr{' class=bad' if is_bad(key, value) else ''}><th>{_esc(key)}</th>"
        f'<td class="num">{_fmt_value(value)}</td></tr>'
        for key, value in mapping.items()
    )
    return f"<table>{rows}</table>"


def _ordered_splits(metrics: Mapping) -> list[str]:
    rank = {split: i for i, split in enumerate(_SPLIT_ORDER)}
    return sorted(metrics, key=lambda split: (rank.get(split, len(rank)), split))


def _png_tag(fig: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _to_yaml(config: Any) -> str:
    # A JSON round trip turns Paths, numpy scalars and enums into plain values safe_dump accepts.
    plain = json.loads(json.dumps(config, default=str))
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False)


# ---- sections ----------------------------------------------------------------------------------


def _review_notes(warnings: list[str]) -> str:
    """The reviewer's notes, above the numbers they qualify."""
    if not warnings:
        return ""
    items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return f'<div class="warn" id="warnings"><b>Before trusting these numbers</b><ul>{items}</ul></div>'


def _headline(metrics: dict) -> str:
    """Big tiles for the numbers people look at first, then all overall metrics per split."""
    if not metrics:
        return '<p class="muted">No metrics were recorded.</p>'
    splits = _ordered_splits(metrics)
    first, main = splits[0], metrics[splits[0]]
    tiles = [(f"{first} accuracy", main.get("accuracy")), (f"{first} F1 (macro)", main.get("f1_macro"))]
    if "rmse" in main:  # a regression model
        tiles = [(f"{first} {k.upper()}", main.get(k)) for k in ("rmse", "mae", "r2")]
        tiles.append((f"{first} RMSE of the mean", main.get("baseline", {}).get("rmse")))
    ndcg = next((k for k in main if k.startswith("ndcg@")), None)
    if ndcg:  # a recommendation model: its ranking at the first cut-off, and the popularity baseline's
        k = ndcg.removeprefix("ndcg@")
        tiles = [(f"{first} {m}", main.get(m)) for m in (ndcg, f"recall@{k}", "mrr")]
        tiles.append((f"{first} {ndcg} of popularity", main.get("popularity", {}).get(ndcg)))
    if _is_number(main.get("roc_auc")):
        tiles.append((f"{first} ROC-AUC", main["roc_auc"]))
    tile_html = "".join(
        f'<div class="tile"><div class="value">{_fmt(value)}</div><div class="name">{_esc(name)}</div></div>'
        for name, value in tiles
    )
    header = "".join(f"<th>{_esc(split)}</th>" for split in splits)
    rows = "".join(
        f"<tr><th>{name}</th>"
        + "".join(f'<td class="num">{_fmt(_lookup(metrics[s], key))}</td>' for s in splits)
        + "</tr>"
        for key, name in _OVERALL_METRICS
        if any(_lookup(metrics[s], key) is not None for s in splits)
    )
    return f'<div class="tiles">{tile_html}</div><table><tr><th>metric</th>{header}</tr>{rows}</table>'


def _lookup(values: Mapping, dotted: str) -> Any:
    """values["a"]["b"] for "a.b"; None where a part is missing."""
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, Mapping) else None
    return values


def regression_plots(predictions: np.ndarray, values: np.ndarray) -> str:
    """Predicted against true values (the diagonal is a perfect model) and the residuals' histogram."""
    with matplotlib.rc_context(_PLOT_STYLE):
        fig = Figure(figsize=(10, 4))
        left, right = fig.subplots(1, 2)
        left.scatter(values, predictions, s=10, alpha=0.6)
        low, high = float(min(values.min(), predictions.min())), float(max(values.max(), predictions.max()))
        left.plot([low, high], [low, high], color="#7b8794", linewidth=1, linestyle="--")
        left.set_xlabel("true value")
        left.set_ylabel("predicted value")
        left.set_title("predicted vs true (test)")
        residuals = predictions - values
        right.hist(residuals, bins=30, color="#3e7cb1")
        right.axvline(0, color="#7b8794", linewidth=1, linestyle="--")
        right.set_xlabel("residual (predicted - true)")
        right.set_ylabel("examples")
        right.set_title(f"residuals: mean {residuals.mean():.3g}, std {residuals.std():.3g}")
        fig.tight_layout()
        return _png_tag(fig, "predicted against true values, and the residuals")


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for one history key, skipping epochs where it is missing or NaN."""
    points = [(row.get("epoch", i + 1), row.get(key)) for i, row in enumerate(history)]
    points = [(epoch, value) for epoch, value in points if _is_number(value)]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _learning_curves(history: list[dict]) -> str:
    if not history:
        return ""
    keys = list(dict.fromkeys(key for row in history for key in row))
    val_metrics = [k for k in keys if k.startswith("val_") and k != "val_loss" and _series(history, k)[1]]
    panels = [
        ("Loss", [k for k in ("train_loss", "val_loss") if _series(history, k)[1]]),
        ("Validation metrics", val_metrics),
        ("Learning rate", ["lr"] if _series(history, "lr")[1] else []),
    ]
    panels = [(name, panel_keys) for name, panel_keys in panels if panel_keys]
    if not panels:
        return '<p class="muted">The history has no plottable values.</p>'
    fig = Figure(figsize=(4.2 * len(panels), 3.2))
    for i, (name, panel_keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key in panel_keys:
            ax.plot(*_series(history, key), marker="o", markersize=3, label=key)
        values = [v for key in panel_keys for v in _series(history, key)[1]]
        if name == "Learning rate" and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")  # schedules span decades; a linear axis flattens the tail
            # Plain numbers: the default 10^x labels are mathtext, which parse_math=False shows raw.
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(panel_keys) > 1:
            ax.legend()
    fig.tight_layout()
    seconds = sum(row["seconds"] for row in history if _is_number(row.get("seconds")))
    caption = f"{len(history)} epochs" + (f", {seconds:,.1f} s of training" if seconds else "")
    return f'{_png_tag(fig, "learning curves")}<p class="muted">{caption}</p>'


def _confusion_matrices(metrics: dict, labels: list[str]) -> str:
    parts = []
    for split in _ordered_splits(metrics):
        matrix = np.asarray(metrics[split].get("confusion_matrix") or [], dtype=float)
        if matrix.ndim == 2 and matrix.size and matrix.shape[0] == matrix.shape[1]:
            plot = _png_tag(_confusion_figure(matrix, labels), f"{split} confusion matrix")
            parts.append(f"<h3>{_esc(split)}</h3>{plot}")
    if not parts:
        return ""
    note = '<p class="muted">Rows are true labels, columns predictions; colour is the share of each row.</p>'
    return note + "".join(parts)


def _confusion_figure(matrix: np.ndarray, labels: list[str]) -> Figure:
    n = matrix.shape[0]
    names = [str(label) for label in labels] if len(labels) == n else [str(i) for i in range(n)]
    # Colour by row share so small classes are as visible as big ones; the text keeps raw counts.
    row_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = min(3 + 0.45 * n, 12)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    tick_size = 9 if n <= 20 else max(4, 9 - n // 20)
    slanted = n > 4  # long names collide under narrow columns
    ax.set_xticks(
        range(n),
        names,
        rotation=45 if slanted else 0,
        ha="right" if slanted else "center",
        fontsize=tick_size,
    )
    ax.set_yticks(range(n), names, fontsize=tick_size)
    ax.set(xlabel="predicted", ylabel="true")
    ax.grid(False)
    if n <= MAX_ANNOTATED_CLASSES:
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(
                col,
                row,
                f"{count:g}",
                ha="center",
                va="center",
                fontsize=10 if n <= 10 else 8,
                color="white" if row_share[row, col] > 0.5 else "black",
            )
    fig.tight_layout()
    return fig


def _per_class_table(metrics: dict, labels: list[str]) -> str:
    splits = [s for s in _ordered_splits(metrics) if metrics[s].get("per_class")]
    if not splits:
        return ""
    names = [str(label) for label in labels]
    names += [str(k) for s in splits for k in metrics[s]["per_class"] if str(k) not in names]
    columns = ("precision", "recall", "f1", "support")
    top = "".join(f'<th colspan="4">{_esc(split)}</th>' for split in splits)
    sub = "".join(f"<th>{c}</th>" for _ in splits for c in columns)
    rows = []
    for name in names:
        cells = []
        for split in splits:
            per_class = {str(k): v for k, v in metrics[split]["per_class"].items()}
            values = per_class.get(name, {})
            cells += [
                f'<td class="num">{_fmt(values.get(c), ".0f" if c == "support" else ".3f")}</td>'
                for c in columns
            ]
        rows.append(f"<tr><th>{_esc(name)}</th>{''.join(cells)}</tr>")
    notes = "".join(
        f'<p class="muted">{_esc(absent_note(split, absent, len(metrics[split]["per_class"])))}</p>'
        for split in splits
        if (absent := metrics[split].get("absent_classes"))
    )
    return f"<table><tr><th></th>{top}</tr><tr><th>class</th>{sub}</tr>{''.join(rows)}</table>{notes}"


def _reliability(metrics: dict) -> str:
    splits = [
        s for s in _ordered_splits(metrics) if (metrics[s].get("reliability") or {}).get("bin_accuracy")
    ]
    if not splits:
        return ""
    fig = Figure(figsize=(5, 5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for split in splits:
        bins = metrics[split]["reliability"]
        counts = bins.get("bin_count") or [1] * len(bins["bin_accuracy"])
        rows = zip(bins.get("bin_confidence", []), bins["bin_accuracy"], counts)
        kept = [(confidence, accuracy, n) for confidence, accuracy, n in rows if n]
        if not kept:
            continue
        confidence, accuracy, count = zip(*kept)  # empty bins have no meaningful accuracy
        top.plot(confidence, accuracy, marker="o", label=f"{split} (ECE {_fmt(metrics[split].get('ece'))})")
        bottom.plot(confidence, count, marker=".", label=split)
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability diagram")
    top.legend(loc="upper left")
    bottom.set(xlabel="confidence", ylabel="examples", ylim=(0, None))
    fig.tight_layout()
    note = '<p class="muted">Points below the diagonal are over-confident, above it under-confident.</p>'
    return _png_tag(fig, "reliability diagram") + note


def _mistakes(mistakes: list[dict]) -> str:
    if not mistakes:
        return ""
    shown = mistakes[:MAX_MISTAKES]
    cards = "".join(f'<div class="card">{_mistake_body(m)}{_mistake_caption(m)}</div>' for m in shown)
    count = f"Showing the {len(shown)} worst mistakes" + (
        f" of {len(mistakes)}." if len(mistakes) > len(shown) else "."
    )
    return f'<p class="muted">{count}</p><div class="grid">{cards}</div>'


def _mistake_caption(mistake: dict) -> str:
    true, pred = _esc(mistake.get("true", "?")), _esc(mistake.get("pred", "?"))
    return f"<div>true <b>{true}</b>, predicted <b>{pred}</b>" + (
        f"<br><span class=muted>error {_fmt(mistake['error'], '.4g')}</span></div>"
        if "error" in mistake
        else f"<br><span class=muted>confidence {_fmt(mistake.get('confidence'))}</span></div>"
    )


def _mistake_body(mistake: dict) -> str:
    if mistake.get("explained"):  # evaluate/explain.py: the input drawn with its attributions
        return f'{mistake["explained"]}<div class="muted">{_esc(mistake.get("explains", ""))}</div>'
    if mistake.get("image") is not None:
        return _thumbnail(mistake["image"])
    if mistake.get("row") is not None:
        return _kv_table(mistake["row"])
    if mistake.get("text") is not None:
        text = str(mistake["text"])
        if len(text) > MAX_TEXT_CHARS:
            text = text[:MAX_TEXT_CHARS] + " …"
        return f'<div class="text">{_esc(text)}</div>'
    return '<p class="muted">(no preview)</p>'


def _thumbnail(image: Any) -> str:
    """An <img> tag for an (H, W) or (C, H, W) float image, scaled up with nearest neighbour."""
    pixels = np.asarray(image)
    if np.issubdtype(pixels.dtype, np.integer):  # raw uint8 pictures rather than the documented [0, 1] floats
        pixels = pixels / 255
    pixels = pixels.astype(np.float32)
    if pixels.ndim == 3 and pixels.shape[0] in (1, 3) and pixels.shape[-1] not in (1, 3):
        pixels = pixels.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    pixels = np.nan_to_num(pixels)
    low, high = float(pixels.min(initial=0.0)), float(pixels.max(initial=1.0))
    if low < 0 or high > 1:  # normalised (mean/std) inputs: stretch back to [0, 1] rather than clip
        pixels = (pixels - low) / max(high - low, 1e-8)
    picture = Image.fromarray((pixels * 255).round().astype(np.uint8))
    scale = max(1, math.ceil(THUMBNAIL_PX / max(picture.size)))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="example" src="data:image/png;base64,{data}">'


def _data_report(report: dict) -> str:
    if not report:
        return ""
    parts = []
    if report.get("warnings"):
        parts.append(
            '<div class="warn"><b>Warnings</b><ul>'
            + "".join(f"<li>{_esc(w)}</li>" for w in report["warnings"])
            + "</ul></div>"
        )
    overview = {k: report[k] for k in ("n_examples", "duplicates") if k in report}
    overview.update({f"{split} examples": n for split, n in (report.get("splits") or {}).items()})
    if overview:
        is_bad = lambda key, value: key == "duplicates" and _positive(value)  # noqa: E731
        parts.append("<h3>Overview</h3>" + _kv_table(overview, is_bad))
    if report.get("columns"):  # tables: each column's role (data/roles.py) and why
        rows = "".join(
            f"<tr><td>{_esc(c['name'])}</td><td>{_esc(c['role'])}</td><td>{_esc(c['why'])}</td></tr>"
            for c in report["columns"]
        )
        parts.append(
            f"<h3>Columns</h3><table><tr><th>column</th><th>role</th><th>why</th></tr>{rows}</table>"
        )
    if report.get("class_counts"):
        parts.append("<h3>Class balance</h3>" + _class_balance(report["class_counts"]))
    if "missing" in report:
        missing = {k: v for k, v in (report["missing"] or {}).items() if v}
        parts.append(
            "<h3>Missing values</h3>"
            + (_kv_table(missing, lambda k, v: True) if missing else '<p class="muted">None.</p>')
        )
    if report.get("leakage"):
        parts.append(
            "<h3>Leakage (identical examples in two splits)</h3>"
            + _kv_table(report["leakage"], lambda k, v: _positive(v))
        )
    if report.get("unreadable"):
        unreadable = [str(item) for item in report["unreadable"]]
        items = "".join(f"<li>{_esc(item)}</li>" for item in unreadable[:MAX_LISTED])
        hidden = len(unreadable) - MAX_LISTED
        more = f'<p class="muted">… and {hidden} more.</p>' if hidden > 0 else ""
        parts.append(f"<h3>Unreadable files ({len(unreadable)})</h3><ul>{items}</ul>{more}")
    parts.append(_text_checks(report))
    extra = {k: v for k, v in report.items() if k not in _DATA_KEYS}
    if extra:
        parts.append("<h3>Other checks</h3>" + _kv_table(extra))
    return "".join(parts)


def _text_checks(report: dict) -> str:
    """Personal data found in the texts, and text lengths in tokens (text data only)."""
    parts = []
    if "pii" in report:
        found = {kind: n for kind, n in report["pii"].items() if n}
        dropped = report.get("pii_dropped_rows")
        note = f'<p class="muted">{dropped} rows holding personal data were dropped.</p>' if dropped else ""
        parts.append(
            "<h3>Personal data in the texts</h3>"
            + (
                _kv_table(found, lambda k, v: True) + note
                if found
                else '<p class="muted">None found.</p>'
                if report["pii"]
                else '<p class="muted">Not checked (data.privacy.pii: off).</p>'
            )
        )
    if "tokens" in report:
        lengths = {
            **report["tokens"],
            "truncated texts": report.get("truncated", 0),
            "empty texts skipped": report.get("empty_texts", 0),
        }
        parts.append(
            "<h3>Text length (tokens)</h3>"
            + _kv_table(lengths, lambda k, v: k != "total" and k.endswith("texts") and _positive(v))
        )
    return "".join(parts)


def _class_balance(class_counts: dict) -> str:
    names = [str(k) for k in class_counts]
    counts = [float(v) if _is_number(v) else 0.0 for v in class_counts.values()]
    fig = Figure(figsize=(6, min(1 + 0.25 * len(names), 20)))
    ax = fig.add_subplot()
    bars = ax.barh(range(len(names)), counts, color="#4c6edb")
    ax.set_yticks(range(len(names)), names, fontsize=9 if len(names) <= 40 else 5)
    if len(names) <= 40:
        ax.bar_label(bars, fmt="%g", padding=2, fontsize=8)
    ax.margins(x=0.08)  # room for the count labels
    ax.invert_yaxis()  # first class at the top, in the order the data report lists them
    ax.set(xlabel="examples")
    fig.tight_layout()
    return _png_tag(fig, "class balance")
