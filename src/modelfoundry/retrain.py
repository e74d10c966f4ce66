"""Feedback -> retrain -> compare -> promote: the loop that turns corrections into a better model.

`retrain("champion")`:
1. takes the version the alias points at, its run's resolved config and every correction stored
   for that version's lineage (the versions it was retrained from, and their feedback);
2. holds a quarter of the corrections back (chosen by feedback id, so the same ones every time)
   and writes the rest as a training-only source (`data.feedback`, each repeated `weight` times);
3. trains a challenger with the champion's config (plus any `--set` overrides), registered as
   a new version in the same lineage and aliased `challenger`;
4. scores both models on the same frozen holdout (the champion's own test split: the seed and
   the original data decide it, the corrections never enter it) and on the held-back corrections;
5. promotes (moves the alias) only when the challenger is better on both together by `margin`.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console

from modelfoundry.config import absolute_paths
from modelfoundry.ensemble import refuse_ensemble
from modelfoundry.errors import UserError
from modelfoundry.models.registry import family_function, family_of
from modelfoundry.predictor import Predictor, load
from modelfoundry.runfiles import atomic_write, atomic_write_json, run_folder
from modelfoundry.store.feedback import Feedback, FeedbackStore, media_dir
from modelfoundry.store.models import ModelStore
from modelfoundry.tasks import task_of

HELD_BACK = 0.25


def retrain(
    ref: str = "champion",
    *,
    promote: bool = False,
    feedback_weight: int = 3,
    margin: float = 0.005,
    overrides: list[str] | None = None,
    console: Console | None = None,
    warm_start: bool = False,
) -> dict:
    """`warm_start`: the challenger starts from the champion's weights (`model.init_from`), not afresh.
    Returns the comparison (also written as comparison.json and comparison.html in the challenger's
    run)."""
    from modelfoundry.runner import train

    console = console or Console(stderr=True)
    store = ModelStore()
    champion = store.get(ref)
    alias = ref if ref in store.aliases(champion.id) else "champion"
    package = Path(champion.path)
    spec = json.loads((package / "model.json").read_text())
    refuse_ensemble(package, "retrain")
    rows = FeedbackStore().list(limit=None, versions=store.lineage_versions(champion.lineage))
    if not rows:
        raise UserError(
            f"no feedback stored for {ref} ({champion.name}) or the versions it came from. Collect "
            "corrections first: `foundry serve` takes them at POST /v1/feedback and on its web page."
        )
    rows.sort(key=lambda r: r.id)
    family = family_of(spec["model"]["name"])
    if family.retrains:  # the family's own loop (pretrained_lm: answers -> SFT examples -> challenger)
        return family_function(spec["model"]["name"], family.retrains)(
            champion,
            package,
            spec,
            rows,
            alias,
            promote=promote,
            feedback_weight=feedback_weight,
            margin=margin,
            overrides=overrides,
            console=console,
            warm_start=True,
        )
    held, used = hold_back([(r.id, r) for r in rows])
    console.print(
        f"{champion.name} ({alias}): {len(rows)} corrections, {len(used)} to train on (x{feedback_weight}), "
        f"{len(held)} held back to score both models",
        highlight=False,
    )

    base_dir = Path(spec.get("config_dir", "."))
    config = absolute_paths(yaml.safe_load((run_folder(package) / "config.yaml").read_text()), base_dir)
    feedback_set = media_dir() / "sets" / f"{datetime.now():%Y%m%d-%H%M%S}-{champion.name}"
    config["data"]["feedback"] = {
        "source": str(_write_feedback(used, spec, config, feedback_set)),
        "weight": feedback_weight,
    }
    config["name"] = f"{config.get('name') or spec['model']['name']}-retrain"[:200]
    if warm_start:
        config["model"]["init_from"] = str(package)
    run = train(config, overrides, console=console, parent_version=champion.id)
    challenger = store.get(f"v{run.version}")
    store.set_alias("challenger", challenger.id)

    task = task_of(spec)
    metric = task.retrain_metric
    inputs, targets = frozen_holdout(config, base_dir)
    feedback_inputs, feedback_targets = [_input_of(r) for r in held], [task.stored(r.label) for r in held]
    scores = {
        name: _scores(load(path), inputs, targets, feedback_inputs, feedback_targets)
        for name, path in (("champion", package), ("challenger", challenger.path))
    }
    # the improvement, positive when the challenger is better: accuracy gained, or the share of RMSE removed
    champion_score, challenger_score = scores["champion"]["combined"], scores["challenger"]["combined"]
    gain = (
        challenger_score - champion_score
        if task.retrain_higher_is_better
        else (champion_score - challenger_score) / max(champion_score, 1e-12)
    )
    better, decision = verdict(
        store, alias, champion, challenger, gain, margin, promote, metric, _gain(task, gain)
    )
    result = {
        "champion": {"version": champion.name, **scores["champion"]},
        "challenger": {"version": challenger.name, "run": run.id, **scores["challenger"]},
        "examples": {
            "holdout": len(targets),
            "feedback": len(feedback_targets),
            "combined": len(targets) + len(feedback_targets),
            "feedback_trained": len(used),
        },
        "holdout_fingerprint": _fingerprint(inputs, targets),
        "metric": metric,
        "higher_is_better": task.retrain_higher_is_better,
        "gain": gain,
        "margin": margin,
        "promoted": better and promote,
        "alias": alias,
        "decision": decision,
    }
    return record(run.path, result)


def verdict(
    store,
    alias: str,
    champion,
    challenger,
    gain: float,
    margin: float,
    promote: bool,
    metric: str,
    shown: str,
) -> tuple[bool, str]:
    """Whether the challenger beat the champion by the margin (`gain` > 0 is better), the alias moved when
    it did and `promote` is set, and the decision in words (`shown`: the gain as the metric reads)."""
    better = gain > 0 and gain >= margin
    if better and promote:
        store.set_alias(alias, challenger.id)
        return True, f"promoted: {alias} -> {challenger.name} (combined {metric} {shown} >= margin {margin})"
    if better:
        return True, (
            f"{challenger.name} is better ({shown} >= margin {margin}) but was not promoted; "
            f"run `foundry models promote {challenger.name}` or retrain with --promote"
        )
    return False, (
        f"kept {alias} = {champion.name}: the challenger {challenger.name} is not better by the margin "
        f"(combined {metric} {shown}, margin {margin})"
    )


def record(run_path: Path, result: dict) -> dict:
    """comparison.json and comparison.html in the challenger's run; the result, with the report's path."""
    result["report"] = str(run_path / "comparison.html")
    atomic_write_json(run_path / "comparison.json", result)
    write_comparison(run_path / "comparison.html", result)
    return result


def decide(
    store,
    alias: str,
    champion,
    challenger,
    run,
    scores: dict,
    gain: float,
    shown: str,
    *,
    margin: float,
    promote: bool,
    metric: str,
    higher_is_better: bool,
    examples: tuple[int, int, int],
    fingerprint: str,
) -> dict:
    """A language model's retrain, from the two models' `scores` on: the verdict (`gain` > 0 is better,
    `shown` as the metric reads), the comparison, recorded in the challenger's run `run`. Returns it.
    `examples`: how many held-out examples and feedback examples were scored, and feedback trained on."""
    better, decision = verdict(store, alias, champion, challenger, gain, margin, promote, metric, shown)
    comparison = {
        "champion": {"version": champion.name, **scores["champion"]},
        "challenger": {"version": challenger.name, "run": run.id, **scores["challenger"]},
        "examples": {
            "holdout": examples[0],
            "feedback": examples[1],
            "combined": examples[0] + examples[1],
            "feedback_trained": examples[2],
        },
        "holdout_fingerprint": fingerprint,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "gain": gain,
        "margin": margin,
        "promoted": better and promote,
        "alias": alias,
        "decision": decision,
    }
    return record(run.path, comparison)


def frozen_holdout(config: dict, base_dir: Path) -> tuple[list, list[str]]:
    """The champion's test split as raw inputs and labels.

    Splits depend on the seed and the original sources only; corrections are added to training
    after splitting, so this is the same set for the champion and every challenger.
    """
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare

    original = {**config, "data": {k: v for k, v in config["data"].items() if k != "feedback"}}
    cfg, _ = load_config(original)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the champion's run already reported its data
        data = prepare(cfg, base_dir)
    if data.test is None:
        raise UserError(
            "retrain needs a test split to compare on; set data.split.test above 0 in the config."
        )
    return list(data.test_display), task_of({"task": cfg.task}).heldout_targets(data)


def _scores(
    predictor: Predictor, inputs: list, targets: list, feedback_inputs: list, feedback_targets: list
) -> dict:
    """The task's retrain metric on the holdout, the held-back corrections, and both together."""
    task = predictor.task_module
    right = task.example_scores(predictor, inputs, targets)
    fixed = (
        task.example_scores(predictor, feedback_inputs, feedback_targets) if feedback_inputs else np.zeros(0)
    )
    return {
        "holdout": task.aggregate_score(right),
        "feedback": task.aggregate_score(fixed) if len(fixed) else None,
        "combined": task.aggregate_score(np.concatenate([right, fixed])),
    }


def _gain(task, gain: float) -> str:
    return f"{gain:+.4f}" if task.retrain_higher_is_better else f"{gain:+.1%} lower"


def _held_back(feedback_id: int) -> bool:
    return hashlib.sha256(str(feedback_id).encode()).digest()[0] < 256 * HELD_BACK


def hold_back(items: list[tuple[int, object]]) -> tuple[list, list]:
    """(held back, trained on) of (feedback id, item) pairs: a quarter held back by id (the same ones every
    time) to score both models on, once there are at least 4."""
    backed = len(items) >= 4
    held = [item for i, item in items if backed and _held_back(i)]
    return held, [item for i, item in items if not (backed and _held_back(i))]


def nothing_to_learn(rows, champion) -> UserError:
    """The error for generation feedback of which no row gives an answer to learn."""
    return UserError(
        f"{len(rows)} feedback row(s) for {champion.name}, none with an answer to learn: give a better "
        "answer, or vote a good answer up, on the server's page or at POST /v1/feedback."
    )


def _input_of(row: Feedback):
    return row.input.get("text") or row.input.get("row") or row.input.get("image")


def _write_feedback(rows: list[Feedback], spec: dict, config: dict, folder: Path) -> Path:
    """Corrections as a source laid out like the training data (an image folder, a JSONL table)."""
    # built-in tables have no label column name; the corrections file needs one
    config["data"]["label"] = config["data"].get("label") or "label"
    return task_of(spec).feedback_records(rows, config, folder)


def _fingerprint(inputs: list, targets: list[str]) -> str:
    digest = hashlib.sha256()
    for item, target in zip(inputs, targets):
        digest.update(
            np.asarray(item).tobytes()
            if isinstance(item, np.ndarray)
            else json.dumps(item, sort_keys=True, default=str).encode()
        )
        digest.update(str(target).encode())
    return digest.hexdigest()[:16]


def write_comparison(path: Path, result: dict) -> None:
    """comparison.html: the scores side by side as a table and a bar chart, and the decision."""
    import matplotlib.pyplot as plt

    from modelfoundry.evaluate.report import _CSS, _esc, _png_tag

    names = [n for n in ("holdout", "feedback", "combined") if result["champion"][n] is not None]
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(names))
    for offset, who in ((-0.2, "champion"), (0.2, "challenger")):
        values = [result[who][n] for n in names]
        bars = ax.bar(x + offset, values, 0.4, label=f"{who} {result[who]['version']}")
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, [f"{n}\n({result['examples'][n]} examples)" for n in names])
    metric = result.get("metric", "accuracy")
    if result.get("higher_is_better", True):
        ax.set_ylim(0, 1.1)
    ax.set_ylabel(metric)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    plot = _png_tag(fig, f"{metric} of champion and challenger")
    plt.close(fig)
    rows = "".join(
        f"<tr><td>{n}</td><td>{result['examples'][n]}</td><td>{result['champion'][n]:.4f}</td>"
        f"<td>{result['challenger'][n]:.4f}</td></tr>"
        for n in names
    )
    buffer = io.StringIO()
    buffer.write(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>retrain: '
        f"{_esc(result['champion']['version'])} vs {_esc(result['challenger']['version'])}</title>"
        f"<style>{_CSS}</style></head><body><main><section><h1>Champion vs challenger</h1>"
        f"<p><strong>{_esc(result['decision'])}</strong></p>"
        f"<table><tr><th>scored on</th><th>examples</th>"
        f"<th>champion {_esc(result['champion']['version'])}</th>"
        f"<th>challenger {_esc(result['challenger']['version'])}</th></tr>{rows}</table>{plot}"
        f"<p>Holdout: the champion's test split (fingerprint {result['holdout_fingerprint']}), which no "
        f"correction enters. Feedback: {result['examples']['feedback']} corrections held back from training; "
        f"{result['examples']['feedback_trained']} were trained on.</p></section></main></body></html>\n"
    )
    atomic_write(path, buffer.getvalue())
