"""Explanations (evaluate/explain.py): are they faithful, and what do they cost?

Faithfulness, per model over held-out inputs: delete the top 20% of the units (tokens, pixels) by
attribution to the predicted class, and separately a random 20%, and compare how far the predicted class's
probability falls. A faithful explanation makes the first fall further; the margin is the difference of
the mean falls. Text: all-MiniLM-L6-v2 fine-tuned on a 4,000-phrase sample of SST-2 (one epoch, layers 1-2
frozen), judged on SST-2 test sentences (tokens deleted from the sequence). Image: the digits CNN
(the first 1,500 digits images, 10 epochs), judged on the other 297 (pixels set to black, the baseline).

Cost: one 64-token text through the fine-tuned MiniLM at several integrated-gradients steps, with the
convergence delta each gives (|sum of attributions - (f(x) - f(baseline))| over |f(x) - f(baseline)|, the
median over 4 texts): the default steps are the fewest whose delta is under 5%. One Adult table row through
gradient-boosted trees (LightGBM's SHAP values), median of 50 calls.

Keep it short on the shared 2-core machine (about 5 minutes): `--texts` and `--images` set how many inputs
the faithfulness check reads.

Run from the repo root:
    .venv/bin/python bench/explain.py
    .venv/bin/python bench/explain.py --write          # also record it in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from adult import adult_frames
from rich.console import Console

import modelfoundry as mf
from modelfoundry.evaluate.explain import explain
from record import write_section

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"
QUIET = Console(quiet=True)
FRACTION = 0.2
STEPS = (8, 16, 32, 64)
COST_TEXTS = 4  # texts timed at each step count (the shared machine: keep it short)


def falls(predictor, explanations, encoded, delete, rng) -> tuple[list[float], list[float]]:
    """Per input, the predicted class's probability fall with the top 20% units deleted, and with a random
    20% deleted. `delete(encoded_one, units) -> encoded_one` removes units (indices into the attributions)."""
    top, random = [], []
    for e, x in zip(explanations, encoded):
        values = e["_values"]
        k = max(1, round(FRACTION * len(values)))
        column = predictor.labels.index(e["label"])
        for chosen, out in (
            (np.argsort(-values)[:k], top),
            (rng.choice(len(values), k, replace=False), random),
        ):
            changed = delete(x, chosen)
            out.append(e["probability"] - float(predictor.run(changed)[0, column]))
    return top, random


def text_faithfulness(folder: Path, texts: int, phrases: int, rng) -> tuple[dict, object]:
    train = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=3).sample(phrases, random_state=0)
    train.to_csv(folder / "sst2_sample.csv", index=False)
    config = {
        "task": "text_classification",
        "data": {
            "source": str(folder / "sst2_sample.csv"),
            "text": "sentence",
            "label": "label",
            "max_length": 64,
        },
        "model": {"name": "pretrained", "freeze_layers": 2},
        "train": {"epochs": 1, "batch_size": 32},
    }
    start = time.perf_counter()
    run = mf.train(config, run_dir=folder / "minilm", console=QUIET)
    trained = time.perf_counter() - start
    predictor = mf.load(folder / "minilm")
    test = pd.read_csv(SST2 / "test.tsv", sep="\t", quoting=3)["sentence"].tolist()[:texts]
    explanations = explain(predictor, test)
    ids = predictor.encode(test)
    for e in explanations:
        e["_values"] = np.array([t["attribution"] for t in e["tokens"]])
        e["_index"] = [t["index"] for t in e["tokens"]]

    def delete(x, units):
        drop = {explanations_by_id[id(x)]["_index"][u] for u in units}
        return [torch.tensor([t for i, t in enumerate(x.tolist()) if i not in drop])]

    explanations_by_id = {id(x): e for x, e in zip(ids, explanations)}
    top, random = falls(predictor, explanations, ids, delete, rng)
    deltas = [abs(e["convergence_delta"]) for e in explanations]
    return (
        {
            "model": f"MiniLM fine-tuned on {phrases:,} SST-2 phrases (test accuracy "
            f"{run.metrics['test']['accuracy']:.3f}, {trained:.0f} s)",
            "inputs": f"{len(test)} SST-2 test sentences",
            "top": top,
            "random": random,
            "delta": statistics.median(deltas),
        },
        predictor,
    )


HELD_OUT = 1500  # digits images 0..1499 train the CNN (as PNG folders); the rest are judged


def image_faithfulness(folder: Path, images: int, rng) -> dict:
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for i in range(HELD_OUT):
        (folder / "digits" / str(bunch.target[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray((bunch.images[i] * 255 / 16).astype(np.uint8)).save(
            folder / "digits" / str(bunch.target[i]) / f"{i}.png"
        )
    config = {
        "task": "image_classification",
        "data": {"source": str(folder / "digits")},
        "model": {"name": "cnn", "width": 16},
        "train": {"epochs": 10},
    }
    run = mf.train(config, run_dir=folder / "cnn", console=QUIET)
    predictor = mf.load(folder / "cnn")
    held_out = np.arange(HELD_OUT, len(bunch.images))
    chosen = rng.choice(held_out, min(images, len(held_out)), replace=False)
    pictures = [(bunch.images[i] / 16.0)[None].astype(np.float32) for i in chosen]
    explanations = [
        e for i in range(0, len(pictures), 100) for e in explain(predictor, pictures[i : i + 100])
    ]
    for e in explanations:
        e["_values"] = np.array(e["heatmap"]).ravel()

    def delete(x, units):
        out = x.clone().reshape(x.shape[0], -1)
        out[:, units] = 0.0
        return out.reshape(1, *x.shape)

    top, random = falls(predictor, explanations, list(predictor.encode(pictures)), delete, rng)
    return {
        "model": f"digits CNN, width 16, 10 epochs on 1,500 images (test accuracy "
        f"{run.metrics['test']['accuracy']:.3f})",
        "inputs": f"{len(pictures)} held-out digits images (8x8), never trained on",
        "top": top,
        "random": random,
        "delta": statistics.median(abs(e["convergence_delta"]) for e in explanations),
    }


def text_cost(predictor, sentences: list[str]) -> list[dict]:
    """Seconds for one 64-token text at each step count, and the relative convergence delta (COST_TEXTS)."""
    long_texts = []
    for i in range(COST_TEXTS):  # sentences joined until they fill 64 tokens (max_length cuts the rest)
        words = " ".join(sentences[i * 3 : i * 3 + 12])
        long_texts.append(words)
    tokens = [len(ids) for ids in predictor.encode(long_texts)]
    rows = []
    for steps in STEPS:
        seconds, relative = [], []
        for text in long_texts:
            start = time.perf_counter()
            (e,) = explain(predictor, [text], steps=steps)
            seconds.append(time.perf_counter() - start)
            change = abs(e["output"] - e["baseline_output"])
            relative.append(abs(e["convergence_delta"]) / max(change, 1e-6))
        rows.append(
            {
                "steps": steps,
                "seconds": statistics.median(seconds),
                "delta": statistics.median(relative),
                "tokens": statistics.median(tokens),
            }
        )
    return rows


def table_cost(folder: Path) -> dict:
    frames = adult_frames()
    if frames is None:
        return {}
    frames[0].to_csv(folder / "adult.csv", index=False)
    config = {
        "task": "tabular_classification",
        "data": {"source": str(folder / "adult.csv"), "label": "income", "drop": ["fnlwgt"]},
        "model": {"name": "gbdt"},
    }
    mf.train(config, run_dir=folder / "adult", console=QUIET)
    predictor = mf.load(folder / "adult")
    row = frames[1].drop(columns=["income", "fnlwgt"]).iloc[[0]].to_dict(orient="records")
    explain(predictor, row)  # warm
    seconds = []
    for _ in range(50):
        start = time.perf_counter()
        (e,) = explain(predictor, row)
        seconds.append(time.perf_counter() - start)
    predict = []
    for _ in range(50):
        start = time.perf_counter()
        predictor.predict(row)
        predict.append(time.perf_counter() - start)
    return {"explain": statistics.median(seconds), "predict": statistics.median(predict), "top": e["top"][:3]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--phrases", type=int, default=4000, help="SST-2 training phrases MiniLM is tuned on")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="record the tables in bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text, predictor = text_faithfulness(folder, args.texts, args.phrases, rng)
        summary = {k: v if isinstance(v, str | float) else float(np.mean(v)) for k, v in text.items()}
        print(f"text faithfulness done: {summary}", file=sys.stderr)
        cost = text_cost(predictor, pd.read_csv(SST2 / "test.tsv", sep="\t", quoting=3)["sentence"].tolist())
        print(f"text cost done: {cost}", file=sys.stderr)
        image = image_faithfulness(folder, args.images, rng)
        print("image faithfulness done", file=sys.stderr)
        table = table_cost(folder)
    lines = [
        (
            f"Faithfulness: the predicted class's probability fall when the top {FRACTION:.0%} units by "
            f"attribution are deleted, against a random {FRACTION:.0%} (mean ± std over the inputs; margin = "
            "top - random)."
        ),
        "",
        "| model | inputs | fall, top 20% | fall, random 20% | margin | median abs. convergence delta |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for entry in (text, image):
        top, random = entry["top"], entry["random"]
        lines.append(
            f"| {entry['model']} | {entry['inputs']} | {np.mean(top):.3f} ± {np.std(top):.3f} | "
            f"{np.mean(random):.3f} ± {np.std(random):.3f} | {np.mean(top) - np.mean(random):+.3f} | "
            f"{entry['delta']:.2g} |"
        )
    lines += [
        "",
        (
            f"Cost of one text of {cost[0]['tokens']:.0f} tokens through the fine-tuned MiniLM (median of "
            f"{COST_TEXTS} texts; relative delta = |convergence delta| / |f(x) - f(baseline)|):"
        ),
        "",
        "| IG steps | seconds | relative delta |",
        "| --- | --- | --- |",
        *(f"| {r['steps']} | {r['seconds']:.2f} | {r['delta']:.3f} |" for r in cost),
    ]
    if table:
        lines += [
            "",
            f"One UCI Adult row through gbdt (LightGBM SHAP values, `explain()` end to end): "
            f"{table['explain'] * 1000:.1f} ms median of 50 (`predict()` of the same row: "
            f"{table['predict'] * 1000:.1f} ms). Its top contributions: "
            + ", ".join(f"{t['name']} {t['attribution']:+.3f}" for t in table["top"])
            + " (log-odds of >50K).",
        ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("Explanations: faithfulness and cost (bench/explain.py)", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
