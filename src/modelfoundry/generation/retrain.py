"""`foundry retrain` for a GPT trained here: served feedback -> texts to learn -> a challenger trained on
from the champion's weights -> both scored by bits per byte on the frozen held-out text -> promote only a
better one.

Feedback rows (kind "generation", stored by the server's page and POST /v1/feedback) become documents: the
prompt followed by its "better answer", or by the answer itself when it was voted up; an answer voted down
without a better one teaches nothing here. As for classifiers (retrain.py), a quarter of the documents is
held back, by feedback id, to score both models on.

The challenger is the champion's config, shape and tokenizer (`model.init_from`: its weights too), trained
on the champion's training split plus the feedback documents repeated `feedback_weight` times (never in
validation or test), for a fifth of the champion's steps at a tenth of its learning rate: continued
training, not a new run. Both models are scored by bits per byte (lower is better, and comparable across
tokenizers) on the champion's test split, which the seed and the corpus decide, and on the held-back
documents; the challenger is promoted only when it is lower on both together by `margin` (relative).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import yaml

from modelfoundry.errors import UserError

METRIC = "bits_per_byte"
STEPS_SHARE = 5  # the challenger trains a fifth of the champion's steps
LR_SHARE = 0.1  # at a tenth of its learning rate


def documents_of(rows, tokenizer) -> tuple[list[tuple[int, str]], int]:
    """(feedback id, prompt + answer) of every row that teaches an answer, and how many rows teach none.
    The answer is kept as typed: a continuation's leading space is part of it."""
    out, skipped = [], 0
    for row in rows:
        item = row.input if isinstance(row.input, dict) else {}
        answer = item.get("better_answer") or (item.get("answer") if item.get("vote") == "up" else None)
        if item.get("messages"):
            prompt = tokenizer.apply_chat([dict(m) for m in item["messages"]])
        else:
            prompt = item.get("prompt")
        if not answer or not answer.strip() or not isinstance(prompt, str):
            skipped += 1
            continue
        out.append((row.id, prompt + answer))
    return out, skipped


def retrain_gpt(
    champion,
    package: Path,
    spec: dict,
    rows,
    alias: str,
    *,
    promote,
    feedback_weight,
    margin,
    overrides,
    console,
    warm_start=True,
) -> dict:
    """The retrain of a GPT champion (see the module docstring); returns the comparison."""
    from modelfoundry.config import absolute_paths, load_config
    from modelfoundry.predictor import load
    from modelfoundry.retrain import decide, hold_back, nothing_to_learn
    from modelfoundry.runfiles import atomic_write, run_folder
    from modelfoundry.runner import train
    from modelfoundry.store.feedback import media_dir
    from modelfoundry.store.models import ModelStore
    from modelfoundry.tasks.generation import corpus_parts

    store = ModelStore()
    run = run_folder(package)
    champion_model = load(package)
    documents, skipped = documents_of(rows, champion_model.tokenizer)
    if not documents:
        raise nothing_to_learn(rows, champion)
    held, used = hold_back(documents)
    console.print(
        f"{champion.name} ({alias}): {len(rows)} feedback rows -> {len(documents)} texts ({skipped} teach no "
        f"answer), {len(used)} to train on (x{feedback_weight}), {len(held)} held back to score both models",
        highlight=False,
    )
    base_dir = Path(spec.get("config_dir", "."))
    config = absolute_paths(yaml.safe_load((run / "config.yaml").read_text()), base_dir)
    cfg, _ = load_config(config)
    parts, blocked = corpus_parts(cfg, base_dir, {})
    if not parts["test"]:
        raise UserError(
            f"{run}: the champion was trained without a test split to compare on; retrain needs "
            "data.split.test above 0."
        )

    folder = media_dir() / "sets" / f"{datetime.now():%Y%m%d-%H%M%S}-{champion.name}"
    source = folder / "feedback.jsonl"
    atomic_write(source, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in used))
    config["data"]["feedback"] = {"source": str(source), "weight": feedback_weight}
    if not warm_start:  # a new run with the champion's config: its own tokenizer, sizes and steps
        config["model"].pop("init_from", None)
    else:  # go on from the champion: its shape (and so its tokenizer), a share of its steps and lr
        config["model"] = {**config["model"], **spec["model"]["options"], "init_from": str(package)}
        steps = champion_steps(run, config)
        lr = cfg.train.lr * LR_SHARE
        config["train"] = {**config.get("train", {}), "max_steps": max(1, steps // STEPS_SHARE), "lr": lr}
        config["train"].pop("max_minutes", None)
        console.print(
            f"challenger: from {champion.name}'s weights, {config['train']['max_steps']:,} steps (a fifth of "
            f"its {steps:,}) at lr {lr:g} (a tenth of its {cfg.train.lr:g}); --set train.max_steps=N or "
            "train.lr=X to change",
            highlight=False,
        )
    config["name"] = f"{config.get('name') or spec['model']['name']}-retrain"[:200]
    result = train(config, overrides, console=console, parent_version=champion.id)
    challenger = store.get(f"v{result.version}")
    store.set_alias("challenger", challenger.id)

    scores = {
        "champion": score(champion_model, parts["test"], blocked, held),
        "challenger": score(load(challenger.path), parts["test"], blocked, held),
    }
    before, after = scores["champion"]["combined"], scores["challenger"]["combined"]
    gain = (before - after) / max(before, 1e-12)  # the share of bits per byte removed
    examples = (len(parts["test"]), len(held), len(used))
    fingerprint = hashlib.sha256("\0".join(parts["test"]).encode()).hexdigest()[:16]
    return decide(
        store,
        alias,
        champion,
        challenger,
        result,
        scores,
        gain,
        f"{gain:+.1%} lower",
        margin=margin,
        promote=promote,
        metric=METRIC,
        higher_is_better=False,
        examples=examples,
        fingerprint=fingerprint,
    )


def champion_steps(run: Path, config: dict) -> int:
    """The steps the champion trained for: its chosen max_steps (choices.json), else the config's."""
    saved = run / "choices.json"
    if saved.is_file():
        return int(json.loads(saved.read_text())["steps"]["max_steps"])
    return int(config.get("train", {}).get("max_steps") or 100)


def score(predictor, holdout: list[str], blocked: bool, feedback: list[str]) -> dict:
    """Bits per byte on the frozen held-out text, the held-back feedback texts, and both together
    (weighted by their bytes)."""
    from modelfoundry.tasks.generation import score_texts

    out: dict = {"holdout": None, "feedback": None}
    total = weight = 0.0
    for name, texts, as_blocks in (("holdout", holdout, blocked), ("feedback", feedback, False)):
        if texts:
            scored = score_texts(predictor, texts, as_blocks, f"retrain: the {name} texts")
            out[name] = scored["bits_per_byte"]
            total += scored["bits_per_byte"] * scored["bytes"]
            weight += scored["bytes"]
    out["combined"] = total / weight
    return out
