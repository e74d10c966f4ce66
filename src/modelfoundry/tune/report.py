"""tune_report.html: one self-contained page about a study — optimisation history, each trial's validation
curve (pruned ones stop early), parameter importances, every trial, and the best config.

Plots are base64 PNGs and the CSS is inline, as in a run's report.html (`evaluate/report.py`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from modelfoundry.evaluate.report import _CSS, _PLOT_STYLE, _esc, _fmt, _png_tag
from modelfoundry.runfiles import atomic_write
from modelfoundry.tasks import MINIMIZED, get_task

if TYPE_CHECKING:
    from modelfoundry.tune.search import Study, TuneResult

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def write_tune_report(path: Path, spec: Study, result: TuneResult) -> Path:
    study, metric = spec.study, spec.metric
    trials = study.get_trials(deepcopy=False)
    with matplotlib.rc_context(_PLOT_STYLE):
        sections = [
            ("history", "Optimisation history", _history(trials, metric, study.direction.name.lower())),
            ("curves", "Validation curves per trial", _curves(trials, metric)),
            ("importance", "Parameter importances", _importances(study)),
            ("trials", "Trials", _trials_table(trials, metric)),
            ("space", "Search space", _space(spec)),
            (
                "best",
                "Best config",
                f"<pre>{_esc(result.best_config.read_text())}</pre>" if result.best_config else "",
            ),
        ]
    sections = [s for s in sections if s[2]]
    title = f"Study {study.study_name}"
    nav = "".join(f'<a href="#{anchor}">{heading}</a>' for anchor, heading, _ in sections)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><main>"
        f"<section><h1>{_esc(title)}</h1>{_headline(spec, trials, result)}<nav>{nav}</nav></section>"
        + "".join(
            f'<section id="{anchor}"><h2>{heading}</h2>{body}</section>' for anchor, heading, body in sections
        )
        + "</main></body></html>\n"
    )
    atomic_write(path, page)
    return path


def _headline(spec: Study, trials: list, result: TuneResult) -> str:
    best = spec.study.best_trial
    counts = {state: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    metric = get_task(spec.raw["task"]).retrain_metric
    test = (result.run.metrics.get("test") or {}).get(metric) if result.run else None
    tiles = [
        (f"best {spec.metric} (trial {best.number})", _fmt(best.value, ".4f")),
        (
            "trials finished / pruned / failed",
            f"{counts[COMPLETE]} / {counts[PRUNED]} / {counts[optuna.trial.TrialState.FAIL]}",
        ),
        ("epochs trained, all trials", f"{result.epochs_total:,}"),
    ]
    if test is not None:
        tiles.append((f"test {metric} of the best config", _fmt(test, ".4f")))
    tile_html = "".join(
        f'<div class="tile"><div class="value">{_esc(value)}</div><div class="name">{_esc(name)}</div></div>'
        for name, value in tiles
    )
    where = [("storage", spec.storage), ("config", spec.origin)]
    if result.run:
        where.append(("run of the best config", result.run.path))
    rows = "".join(f"<tr><th>{name}</th><td>{_esc(value)}</td></tr>" for name, value in where)
    return f'<div class="tiles">{tile_html}</div><table>{rows}</table>'


def _score(trial, metric: str) -> float | None:
    """A finished trial's value; a pruned trial's best epoch before it was stopped."""
    if trial.value is not None:
        return trial.value
    values = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
    return (min(values) if metric in MINIMIZED else max(values)) if values else None


def _history(trials: list, metric: str, direction: str) -> str:
    done = [t for t in trials if t.state in (COMPLETE, PRUNED) and _score(t, metric) is not None]
    if not done:
        return ""
    fig = Figure(figsize=(7.5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    for state, style in (
        (COMPLETE, {"color": "#3451b2", "marker": "o", "label": "finished"}),
        (PRUNED, {"color": "#9aa5b1", "marker": "x", "label": "pruned (best epoch so far)"}),
    ):
        points = [(t.number, _score(t, metric)) for t in done if t.state == state]
        if points:
            ax.scatter(*zip(*points), s=22, **style)
    best, steps = None, []
    for t in sorted((t for t in done if t.state == COMPLETE), key=lambda t: t.number):
        if best is None or (t.value < best if direction == "minimize" else t.value > best):
            best = t.value
        steps.append((t.number, best))
    if steps:
        ax.step(*zip(*steps), where="post", color="#e12d39", label="best so far")
    ax.set(xlabel="trial", ylabel=metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    return _png_tag(fig, "optimisation history")


def _curves(trials: list, metric: str) -> str:
    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        return ""
    fig = Figure(figsize=(7.5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    for t in curves:
        epochs = sorted(t.intermediate_values)
        pruned = t.state == PRUNED
        ax.plot(
            epochs,
            [t.intermediate_values[e] for e in epochs],
            color="#9aa5b1" if pruned else "#3451b2",
            alpha=0.6 if pruned else 0.8,
            linewidth=1,
            marker="x" if pruned else None,
            markevery=[-1],
        )
    ax.set(xlabel="epoch", ylabel=metric, title="blue: finished, grey: pruned (x where it stopped)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _png_tag(fig, "validation curves")


def _importances(study: optuna.Study) -> str:
    finished = list(study.get_trials(deepcopy=False, states=(COMPLETE,)))
    if len(finished) < 2:
        return '<p class="muted">Importances need at least two finished trials.</p>'
    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:  # e.g. every finished trial drew the same values
        return f'<p class="muted">Importances could not be computed: {_esc(exc)}</p>'
    if not importances:
        return '<p class="muted">No parameter varied between the finished trials.</p>'
    names = list(importances)[::-1]
    fig = Figure(figsize=(6.5, 0.5 + 0.4 * len(names)))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, [importances[n] for n in names], color="#3451b2")
    ax.set(xlabel="importance (the parameters' shares sum to 1)", xlim=(0, 1))
    fig.tight_layout()
    caption = (
        f"Optuna's default importance evaluator over {len(finished)} finished trials; with few trials "
        "these are rough."
    )
    return f'{_png_tag(fig, "parameter importances")}<p class="muted">{caption}</p>'


def _trials_table(trials: list, metric: str) -> str:
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    header = "".join(
        f"<th>{_esc(k)}</th>" for k in ["trial", "state", metric, "epochs", "seconds", *keys, "note"]
    )
    rows = []
    for t in trials:
        cells = [
            str(t.number),
            t.state.name.lower(),
            _fmt(_score(t, metric), ".4f"),
            str(t.user_attrs.get("epochs", "")),
            _fmt(t.user_attrs.get("seconds"), ".1f"),
        ]
        cells += [
            _fmt(t.params[k], ".4g") if isinstance(t.params.get(k), float) else str(t.params.get(k, ""))
            for k in keys
        ]
        cells.append(t.user_attrs.get("error", ""))
        rows.append("<tr>" + "".join(f'<td class="num">{_esc(c)}</td>' for c in cells) + "</tr>")
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _space(spec: Study) -> str:
    rows = "".join(f"<tr><th>{_esc(d.key)}</th><td>{_esc(d.describe())}</td></tr>" for d in spec.dims)
    return f"<table>{rows}</table>"
