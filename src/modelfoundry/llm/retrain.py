"""`foundry retrain` for a fine-tuned pretrained_lm: served feedback -> new SFT examples -> a challenger
fine-tuned from the champion's adapter -> both scored on the frozen held-out set -> promote only a better one.

Feedback rows (kind "generation", stored by the server's page and POST /v1/feedback; store/feedback.py)
become examples: a "better answer" is the response to learn for its prompt; an answer voted up is learnt
as it was; an answer voted down without a better one teaches nothing here (it would be a preference pair
for a DPO step, which this does not do). As for classifiers (retrain.py), a quarter of the examples is
held back, by feedback id, to score both models on.

The challenger trains on the champion's own training rows (its held-out split removed, so the comparison
stays clean) plus the feedback examples repeated `feedback_weight` times, starting from the champion's
adapter (`model.init_from`). Both are scored by ROUGE-L of their greedy answers (exact match beside it) on
the champion's heldout.jsonl and on the held-back feedback.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from modelfoundry.errors import UserError
from modelfoundry.llm import instruct
from modelfoundry.llm.metrics import exact_match, rouge_l
from modelfoundry.llm.sft import HELDOUT_FILE

METRIC = "rouge_l"


def examples_of(rows) -> tuple[list[tuple[int, list[dict]]], int]:
    """(feedback id, conversation) of every row that teaches an answer, and how many rows teach none."""
    out, skipped = [], 0
    for row in rows:
        item = row.input if isinstance(row.input, dict) else {}
        answer = item.get("better_answer") or (item.get("answer") if item.get("vote") == "up" else None)
        if item.get("messages"):
            turns = [dict(m) for m in item["messages"]]
        elif item.get("prompt"):
            turns = [{"role": "user", "content": item["prompt"]}]
        else:
            turns = []
        if not answer or not answer.strip() or not turns or turns[-1]["role"] != "user":
            skipped += 1
            continue
        out.append((row.id, [*turns, {"role": "assistant", "content": answer.strip()}]))
    return out, skipped


def retrain_lm(
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
    """The retrain of a pretrained_lm champion (see the module docstring); returns the comparison."""
    from modelfoundry.config import absolute_paths
    from modelfoundry.retrain import decide, hold_back, nothing_to_learn
    from modelfoundry.runfiles import atomic_write, run_folder
    from modelfoundry.runner import train
    from modelfoundry.store.feedback import media_dir
    from modelfoundry.store.models import ModelStore

    store = ModelStore()
    run = run_folder(package)
    heldout_path = run / HELDOUT_FILE
    if not heldout_path.is_file():
        raise UserError(
            f"{run}: no {HELDOUT_FILE} (the frozen test split of instruction data) to compare on. Retrain "
            "needs "
            "a champion trained on prompt/response or messages data with data.split.test above 0."
        )
    examples, skipped = examples_of(rows)
    if not examples:
        raise nothing_to_learn(rows, champion)
    held, used = hold_back(examples)
    console.print(
        f"{champion.name} ({alias}): {len(rows)} feedback rows -> {len(examples)} examples ({skipped} teach "
        "no "
        f"answer), {len(used)} to train on (x{feedback_weight}), {len(held)} held back to score both models",
        highlight=False,
    )
    base_dir = Path(spec.get("config_dir", "."))
    config = absolute_paths(yaml.safe_load((run / "config.yaml").read_text()), base_dir)
    heldout = [json.loads(line)["messages"] for line in heldout_path.read_text().splitlines() if line.strip()]
    source = Path(config["data"]["source"])
    frozen = {json.dumps(c, sort_keys=True) for c in heldout}
    original = [c for c in instruct.read_conversations(source) if json.dumps(c, sort_keys=True) not in frozen]
    folder = media_dir() / "sets" / f"{datetime.now():%Y%m%d-%H%M%S}-{champion.name}"
    data = folder / "instructions.jsonl"
    lines = [json.dumps({"messages": c}, ensure_ascii=False) for c in original + used * feedback_weight]
    atomic_write(data, "\n".join(lines) + "\n")
    config["data"]["source"] = str(data)
    config["name"] = f"{config.get('name') or spec['model']['name']}-retrain"[:200]
    if warm_start:
        config["model"]["init_from"] = str(package)
    result = train(config, overrides, console=console, parent_version=champion.id)
    challenger = store.get(f"v{result.version}")
    store.set_alias("challenger", challenger.id)

    scores = {
        name: score(path, heldout, held)
        for name, path in (("champion", package), ("challenger", challenger.path))
    }
    gain = scores["challenger"]["combined"] - scores["champion"]["combined"]
    examples = (len(heldout), len(held), len(used))
    return decide(
        store,
        alias,
        champion,
        challenger,
        result,
        scores,
        gain,
        f"{gain:+.4f}",
        margin=margin,
        promote=promote,
        metric=METRIC,
        higher_is_better=True,
        examples=examples,
        fingerprint=_fingerprint(heldout),
    )


def score(package: Path, heldout: list[list[dict]], feedback: list[list[dict]]) -> dict:
    """ROUGE-L (and exact match) of a package's greedy answers on the frozen held-out set, the held-back
    feedback, and both together."""
    from modelfoundry.llm.generate import greedy_answers
    from modelfoundry.predictor import load

    generator = load(package)
    tokenizer = generator.tokenizer
    out = {}
    every = []
    for name, conversations in (("holdout", heldout), ("feedback", feedback)):
        if not conversations:
            out[name] = None
            continue
        prompts = [tokenizer.encode(tokenizer.apply_chat(c[:-1])) for c in conversations]
        references = [c[-1]["content"] for c in conversations]
        longest = max(len(tokenizer.encode(r)) for r in references)
        answers = greedy_answers(generator.model, tokenizer, prompts, min(128, longest + 8))
        values = [rouge_l(a, r) for a, r in zip(answers, references)]
        every += values
        out[name] = float(np.mean(values))
        out[f"{name}_exact_match"] = float(np.mean([exact_match(a, r) for a, r in zip(answers, references)]))
    out["combined"] = float(np.mean(every))
    return out


def _fingerprint(conversations: list[list[dict]]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(conversations, sort_keys=True).encode()).hexdigest()[:16]
