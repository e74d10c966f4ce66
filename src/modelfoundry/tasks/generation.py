"""Text generation: pretrain a GPT on your own text (task: text_generation).

The data is a token stream, not examples with targets, so this task runs its own data, evaluation and
packaging (`run`) around the common training loop (`training.loop.fit`):

1. read the documents (a .txt file, a folder of .txt/.md files, or a JSONL/CSV/Parquet column `data.text`),
   check them (UTF-8 by file and line, binary files, empty and duplicate documents, personal data);
2. split by document (seeded); one file is cut into contiguous blocks at line ends, never shuffled lines;
3. train the tokenizer on the training split (byte-level BPE, or characters) and write each split's
   tokens once to a memory-mapped uint16/uint32 file (nanoGPT's layout), so training streams windows;
4. pick the model size and the steps from the corpus and the time budget when the config leaves them out;
5. train: an "epoch" is an evaluation interval of random contiguous windows; warm-up + cosine, AdamW with
   decay on matrices only, clipping, checkpoints and DDP are the loop's own;
6. score validation and test: loss, perplexity and bits per byte (independent of the tokenizer); write
   metrics.json, the report (learning curve, sample generations) and the package (weights + tokenizer).
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from modelfoundry.errors import UserError
from modelfoundry.tasks.base import Objective, Task

TEXT_SUFFIXES = (".txt", ".md")
BLOCKS = 40  # a corpus of few documents is cut into this many contiguous blocks to split
FEW_DOCUMENTS = 20  # below this many documents the corpus is split by blocks instead
EVAL_WINDOWS = 32  # windows scored after each evaluation interval (evenly spread over the split)
FINAL_WINDOWS = 1000  # windows scored for the final val/test numbers (all of a split up to this)
DEFAULT_MINUTES = 5.0  # the time budget when neither train.max_steps nor train.max_minutes is set
# Default sizes: the largest of SHAPES that trains on at least TOKENS_PER_PARAMETER tokens per parameter in
# the time budget, each shape timed here (not extrapolated from the smallest one's FLOP rate: wide models
# run matmuls nearer the machine's rate). Chinchilla's 20 (Hoffmann et al. 2022) held on Shakespeare at 1
# and 3 CPU minutes: wider/deeper models on fewer tokens (2 to 9 per parameter) reached a higher validation
# bits/byte than the 2 x 64 model on 19 to 56 (bench/gpt_sizes.py; bench/RESULTS.md "GPT default sizing").
TOKENS_PER_PARAMETER = 20
# candidate shapes (n_layer, n_head, n_embd), smallest first; heads of 64 from 128 wide on
SHAPES = (
    *((2, 2, 64), (3, 3, 96), (4, 2, 128), (4, 3, 192), (4, 4, 256)),
    *((6, 6, 384), (8, 8, 512), (12, 12, 768)),
)
PROBE = 4  # windows per timed step when foundry measures this machine
MIN_STEPS = 500  # with a time budget, the default batch shrinks until the budget makes this many steps
SIZE_KEYS = ("model.n_layer", "model.n_head", "model.n_embd")


class LanguageModelObjective(Objective):
    """Next-token cross-entropy; validation in loss, perplexity and bits per byte."""

    monitors = {"val_loss": "min", "val_bits_per_byte": "min"}  # noqa: RUF012 (as the base class)

    def __init__(self, bytes_per_token: float):
        self.bytes_per_token = bytes_per_token

    def loss(self, outputs, targets, weights=None):
        """outputs (B, T, V) logits, targets (B, T) next tokens."""
        from torch.nn import functional as F

        return F.cross_entropy(outputs.flatten(0, 1).float(), targets.flatten())

    def evaluate(self, model, val, autocast=None) -> dict[str, float]:
        scores = score(model, val, autocast)
        return {f"val_{k}": scores[k] for k in ("loss", "perplexity", "bits_per_byte")}

    def line(self, record: dict) -> str:
        return f"val_loss {record['val_loss']:.4f}  val_bpb {record['val_bits_per_byte']:.4f}"


def score(model, windows, autocast=None, batch_size: int = 16) -> dict:
    """Mean next-token loss over `windows` (HeldOutWindows), its perplexity, and bits per byte: the loss
    in bits times the split's tokens per byte of UTF-8 text (comparable across tokenizers)."""
    import torch
    from torch.nn import functional as F

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for inputs, targets in windows.batches(batch_size):
            inputs, targets = inputs.to(device), targets.to(device)
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                logits = model(inputs)
            total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    loss = total / max(count, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": loss / math.log(2) / windows.bytes_per_token,
        "tokens_scored": count,
    }


# ---- the token stream ----------------------------------------------------------------------------


class RandomWindows:
    """Training batches of random contiguous windows of a split's tokens (a memory-mapped file): inputs
    (B, T) and the next tokens (B, T). `windows` per pass makes one evaluation interval ("epoch")."""

    def __init__(self, tokens: np.ndarray, block_size: int, windows: int, device="cpu"):
        self.tokens, self.block_size, self.windows, self.device = tokens, block_size, windows, device

    def __len__(self) -> int:
        return self.windows

    def to(self, device):
        self.device = device
        return self

    def batches(self, batch_size: int, shuffle: bool = True, generator=None):
        import torch

        last_start = len(self.tokens) - self.block_size  # starts in [0, last_start): the window + 1 fits
        for done in range(0, self.windows, batch_size):
            starts = torch.randint(
                0, last_start, (min(batch_size, self.windows - done),), generator=generator
            )
            rows = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts.tolist()])
            rows = torch.from_numpy(rows.astype(np.int64))
            yield rows[:, :-1].to(self.device), rows[:, 1:].to(self.device)


class HeldOutWindows:
    """Windows of a validation or test split for scoring, in order: all of it (non-overlapping) up to
    `max_windows`, else that many evenly spread over it."""

    def __init__(self, tokens: np.ndarray, block_size: int, max_windows: int, bytes_per_token: float):
        self.tokens, self.bytes_per_token = tokens, bytes_per_token
        self.block_size = min(block_size, len(tokens) - 1)
        whole = (len(tokens) - 1) // self.block_size
        count = min(max_windows, whole)
        self.starts = np.linspace(0, len(tokens) - 1 - self.block_size, count).astype(np.int64)
        if count == whole:
            self.starts = np.arange(count) * self.block_size

    def __len__(self) -> int:
        return len(self.starts)

    def to(self, device):
        return self

    def batches(self, batch_size: int, shuffle: bool = False, generator=None):
        import torch

        for i in range(0, len(self.starts), batch_size):
            rows = np.stack(
                [self.tokens[s : s + self.block_size + 1] for s in self.starts[i : i + batch_size]]
            )
            rows = torch.from_numpy(rows.astype(np.int64))
            yield rows[:, :-1], rows[:, 1:]


def write_tokens(path: Path, ids: list[int], vocab_size: int) -> np.memmap:
    """A split's tokens written once to disk (uint16 below 65,536 tokens, else uint32), mapped back."""
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    array = np.memmap(path, dtype=dtype, mode="w+", shape=(max(len(ids), 1),))
    array[: len(ids)] = np.asarray(ids, dtype=dtype)
    array.flush()
    return np.memmap(path, dtype=dtype, mode="r", shape=(len(ids),))


def token_files(
    tokenizer, parts: dict, blocked: bool, part_bytes: dict, folder: Path, extra_train: list[str] = ()
) -> tuple[dict, dict]:
    """Each split's tokens written once to `folder/<split>.bin` and mapped back, and its UTF-8 bytes per
    token. Documents end with the end-of-text token; blocks of one text are joined without one.
    `extra_train`: documents of their own after the training split's (foundry retrain's answers)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens, per_token = {}, {}
    for name, pieces in parts.items():
        if pieces:
            ids = tokenizer.encode("".join(pieces)) if blocked else tokenizer.encode_documents(pieces)
            if name == "train" and extra_train:
                ids = ids + [tokenizer.eos_id] * blocked + tokenizer.encode_documents(extra_train)
            tokens[name] = write_tokens(folder / f"{name}.bin", ids, tokenizer.vocab_size)
            per_token[name] = part_bytes[name] / max(1, len(ids))
    return tokens, per_token


# ---- reading and splitting the corpus ------------------------------------------------------------


def corpus_parts(cfg, base_dir: Path, report: dict) -> tuple[dict, bool]:
    """The corpus read, checked and split (train/val/test documents or blocks, and whether blocks of one
    text): the same split for a run and for `foundry retrain`'s frozen holdout (seed and source decide)."""
    from modelfoundry.data.prepare import resolve_source

    data = cfg.data
    source = resolve_source(data.source, base_dir)
    report["source"] = str(source)
    documents, how = read_documents(data, source)
    documents = check_documents(documents, how, data, str(source), report)
    val, test = (data.split.val, data.split.test) if cfg.user_set("data.split") else (0.05, 0.05)
    parts, blocked = split_corpus(documents, val, test, data.split.seed)
    report["split"] = (
        f"{len(documents)} document(s) cut into {sum(map(len, parts.values()))} contiguous blocks"
        if blocked
        else "by document"
    ) + f", seeded ({data.split.seed}): val {val:g}, test {test:g}"
    report["splits"] = {k: len(parts[k]) for k in ("train", "val", "test")}
    return parts, blocked


def feedback_documents(data, base_dir: Path, report: dict) -> list[str]:
    """data.feedback.source (JSONL, a `text` per line, as `foundry retrain` writes it): documents added to
    the training split `weight` times, checked like the corpus (personal data rules included)."""
    from modelfoundry.data import text

    path = Path(text.resolve_path(data.feedback.source, base_dir))
    if not path.is_file():
        raise UserError(f"data.feedback.source: {path} does not exist.")
    texts, _ = text.read_text_table(path, "text", None, True)
    checked: dict = {}
    kept = check_documents(["" if t is None else t for t in texts], "rows", data, str(path), checked)
    report["feedback"] = {"documents": len(kept), "weight": data.feedback.weight}
    return kept


def champion_start(cfg, base_dir: Path):
    """model.init_from of a GPT: (its tokenizer, its kind, its weights), to go on training from them."""
    from safetensors.torch import load_file

    from modelfoundry.data import text
    from modelfoundry.generation.tokenizer import load_tokenizer
    from modelfoundry.runfiles import package_folder

    try:
        folder = package_folder(text.resolve_path(cfg.model.init_from, base_dir))
    except UserError as exc:
        raise UserError(f"model.init_from: {exc}") from None
    spec = json.loads((folder / "model.json").read_text())
    if spec.get("task") != "text_generation" or spec["model"]["name"] != "gpt":
        raise UserError(
            f"model.init_from: {folder} is a {spec.get('task')} {spec['model']['name']} model; a gpt starts "
            "only from another text_generation gpt."
        )
    weights = load_file(str(folder / "model.safetensors"))
    return load_tokenizer(folder), spec["preprocessing"]["tokenizer"], weights


def load_start(model, weights: dict, origin: str) -> None:
    """The champion's weights into a model of the same shape; a clear error when the shapes differ."""
    own = model.state_dict()
    wrong = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
    if wrong or set(own) - set(weights):
        raise UserError(
            f"model.init_from: {origin}: its weights do not fit this model (first mismatch: "
            f"{(wrong or sorted(set(own) - set(weights)))[0]}); keep n_layer, n_head, n_embd and block_size "
            "of the model it was trained as."
        )
    model.load_state_dict(weights)


def read_text_file(path: Path) -> str:
    """A text file's contents; UserError for a binary file or bytes that are not UTF-8 (file and line)."""
    from modelfoundry.data import tabular

    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise UserError(
            f"{path}: a binary file (it holds NUL bytes), not text. text_generation reads UTF-8 text: "
            "give .txt or .md files, or a table with a text column (data.text)."
        )
    tabular.check_utf8(path)
    return path.read_text(encoding="utf-8-sig")


def read_documents(data, path: Path) -> tuple[list[str], str]:
    """The documents of a source, and how they were read ("one file", "files", "rows")."""
    from modelfoundry.data import tabular, text

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise UserError(
                f"data.source: {path} holds no .txt or .md files. Put the corpus there as UTF-8 text files "
                "(one document per file), or give one .txt file."
            )
        return [read_text_file(f) for f in files], "files"
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return [read_text_file(path)], "one file"
    if suffix in tabular.TABLE_SUFFIXES:
        if not data.text:
            raise UserError(
                f"data.text: {path} is a table; name the column that holds the documents in data.text."
            )
        texts, _ = text.read_text_table(path, data.text, None, data.quoting)
        return ["" if t is None else t for t in texts], "rows"
    raise UserError(
        f"data.source: {path} is not a .txt or .md file, a folder of them, or a table "
        f"({', '.join(sorted(tabular.TABLE_SUFFIXES))}) with a text column."
    )


def check_documents(documents: list[str], how: str, data, origin: str, report: dict) -> list[str]:
    """Empty documents counted and left out, personal data per data.privacy.pii, exact duplicates
    reported (left out with data.dedupe). Returns the documents kept."""
    from modelfoundry.data import text

    if not any(d.strip() for d in documents):
        raise UserError(
            f"data.source: {origin}: the corpus is empty ({len(documents)} document(s), all empty or "
            "whitespace). Give text to train on."
        )
    rules = text.TextRules(data.privacy.pii, origin)
    kept, _, _ = rules(documents, np.zeros(len(documents)))
    rules.finish(report)
    duplicates = len(kept) - len(set(kept))
    report["duplicates"] = duplicates
    if duplicates:
        if data.dedupe:
            kept = list(dict.fromkeys(kept))
        report.setdefault("warnings", []).append(
            f"{origin}: {duplicates} document(s) are exact duplicates of others"
            + (", left out (data.dedupe)." if data.dedupe else "; set data.dedupe: true to leave them out.")
        )
    report["documents"] = len(kept)
    report["read_as"] = how
    report["bytes"] = sum(len(d.encode("utf-8")) for d in kept)
    return kept


def blocks_of(text: str, count: int) -> list[str]:
    """`text` cut into about `count` contiguous blocks, each ending at a line end where there is one."""
    size = max(1, len(text) // count)
    blocks, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        newline = text.find("\n", end)
        end = len(text) if newline < 0 or newline - end > size else newline + 1
        blocks.append(text[start:end])
        start = end
    return blocks


def split_corpus(documents: list[str], val: float, test: float, seed: int) -> tuple[dict, bool]:
    """{"train", "val", "test"} -> list of pieces, and whether the pieces are blocks of one text (joined
    without a document boundary) rather than documents. Seeded; pieces keep their order within a split."""
    blocked = len(documents) < FEW_DOCUMENTS
    pieces = blocks_of("\n\n".join(documents), BLOCKS) if blocked else documents
    n = len(pieces)
    n_test = max(1, round(n * test)) if test > 0 and n >= 3 else 0
    n_val = max(1, round(n * val)) if val > 0 and n >= 3 else 0
    order = np.random.default_rng(seed).permutation(n)
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {name: [pieces[i] for i in sorted(index)] for name, index in parts.items()}, blocked


def default_tokenizer(train_bytes: int) -> tuple[str, int, str]:
    """(type, vocab_size, why) when the config names no tokenizer: characters for a small corpus, else
    byte-level BPE with a vocabulary that grows with the corpus (more tokens need more text to learn)."""
    if train_bytes < 200_000:
        return "char", 0, f"{train_bytes:,} bytes of training text is small: one token per character"
    vocab = min(8192, max(512, 2 ** round(math.log2(train_bytes / 5000))))
    return (
        "bpe",
        vocab,
        f"byte-level BPE with {vocab:,} tokens for {train_bytes / 1e6:.1f} MB of training text",
    )


# ---- sizes from the corpus and the budget --------------------------------------------------------


def flops_per_token(n_layer: int, n_embd: int, block_size: int, vocab_size: int) -> float:
    """Training FLOPs per token (nanoGPT's estimate): 6 per weight of the matmuls + attention's scores."""
    weights = 12 * n_layer * n_embd**2 + vocab_size * n_embd
    return 6 * weights + 12 * n_layer * n_embd * block_size


def step_seconds(options: dict, vocab_size: int, batch_size: int, steps: int = 3) -> float:
    """Seconds of one training step (forward, backward, AdamW) of a model with `options`, measured here."""
    import torch

    from modelfoundry.models.gpt import build_gpt, parameter_groups

    model = build_gpt((options["block_size"],), 0, vocab_size, 0, **options)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1))
    x = torch.randint(0, vocab_size, (batch_size, options["block_size"]))
    best = math.inf
    for i in range(steps + 1):
        start = time.perf_counter()
        logits = model(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step allocates
            best = min(best, time.perf_counter() - start)
    return best


def choose_run(cfg, vocab_size: int, train_tokens: int, block_size: int, console) -> tuple[dict, dict, list]:
    """The model options, batch and steps the config leaves to foundry: (options, {"max_steps",
    "batch_size", "budget_minutes"}, what was chosen in words). Timed on this machine with a few steps of
    PROBE windows.

    Size: the largest of SHAPES whose parameters x TOKENS_PER_PARAMETER fit the tokens the time budget
    trains that shape on at the rate measured here for it (and at most 2 parameters per token of corpus,
    so a small corpus gets a small model); shapes are timed smallest first until one does not fit. Batch:
    a short budget is better spent on many small steps than on a few large ones, so the batch shrinks
    (down to PROBE windows) until the budget makes MIN_STEPS steps. Steps: what the budget allows at that
    size and batch."""
    train, options = cfg.train, dict(cfg.model.model_extra or {})
    options["block_size"] = block_size
    choices = []
    minutes = train.max_minutes or (None if train.max_steps else DEFAULT_MINUTES)
    budget = minutes * 60 * 0.85 if minutes else None  # the rest evaluates and checkpoints
    per_window = {}  # shape -> seconds per training window, measured

    def window_seconds(shape: dict) -> float:
        key = tuple(shape.values())
        if key not in per_window:
            per_window[key] = step_seconds({**options, **shape}, vocab_size, PROBE) / PROBE
        return per_window[key]

    if not all(cfg.user_set(k) for k in SIZE_KEYS):
        fits, seen = SHAPES[0], None
        for n_layer, n_head, n_embd in SHAPES:
            params = 12 * n_layer * n_embd**2
            if params > 2 * train_tokens:  # a small corpus gets a small model
                break
            shape = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
            # the tokens this shape trains on in the budget, at the rate it runs at here (timed: narrow
            # models use the machine far worse than wide ones)
            tokens = (
                budget / window_seconds(shape) * block_size
                if budget
                else train.max_steps * train.batch_size * block_size
            )
            if params * TOKENS_PER_PARAMETER > tokens:
                break
            fits, seen = (n_layer, n_head, n_embd), tokens
        picked = dict(zip(("n_layer", "n_head", "n_embd"), fits))
        options.update({k: v for k, v in picked.items() if not cfg.user_set(f"model.{k}")})
        if options["n_embd"] % options["n_head"]:
            options["n_head"] = math.gcd(options["n_embd"], options["n_head"])
        params = 12 * options["n_layer"] * options["n_embd"] ** 2
        why = (
            f"the largest that trains on {TOKENS_PER_PARAMETER}+ tokens per parameter in the budget "
            f"(~{seen / 1e6:.1f}M tokens at the speed measured here)"
            if seen
            else "the smallest"
        )
        choices.append(
            f"model {options['n_layer']} layers x {options['n_head']} heads x {options['n_embd']} wide "
            f"(~{params / 1e6:.2f}M parameters besides the embeddings): {why}, for {train_tokens:,} "
            "training tokens"
        )
    options.setdefault("n_head", 4)
    shape = {k: options.get(k, d) for k, d in zip(("n_layer", "n_head", "n_embd"), (4, 4, 128))}
    # threads first: the batch and the steps follow from the speed training will run at
    threads = one_thread(cfg, {**options, **shape}, vocab_size, PROBE) if budget else None
    if threads:
        per_window[tuple(shape.values())] = threads["one"] / PROBE
        choices.append(
            f"threads 1: a step of {PROBE} windows took {threads['one'] * 1000:.0f} ms on one thread and "
            f"{threads['all'] * 1000:.0f} ms on {threads['threads']} here (a small model's kernels wait for "
            "the other threads longer than they share work)"
        )
    batch = train.batch_size
    if budget and not cfg.user_set("train.batch_size"):
        batch = max(PROBE, min(batch, int(budget / (MIN_STEPS * window_seconds(shape)))))
        if batch < train.batch_size:
            choices.append(
                f"batch_size {batch}: {window_seconds(shape) * 1000:.0f} ms a window measured here; smaller "
                f"batches make more steps (up to {MIN_STEPS}) in train.max_minutes={minutes:g}"
            )
    step = window_seconds(shape) * batch if budget else None
    max_steps = train.max_steps
    if max_steps is None:
        max_steps = max(1, int(budget / step))
        choices.append(
            f"max_steps {max_steps:,}: {step * 1000:.0f} ms a step measured here, in "
            f"train.max_minutes={minutes:g} (85% of it; the rest evaluates and checkpoints)"
        )
    for line in choices:
        console.print(f"chosen: {line}", highlight=False)
    steps = {"max_steps": max_steps, "batch_size": batch, "budget_minutes": minutes}
    if threads:
        steps["threads"] = 1
    return options, steps, choices


def one_thread(cfg, options: dict, vocab_size: int, batch: int) -> dict | None:
    """{"one", "all", "threads"} when a training step of this model runs clearly faster on one CPU thread
    than on all of torch's (timed here, both); None otherwise or when there is one thread."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1 or cfg.train.device not in ("auto", "cpu"):
        return None
    every = step_seconds(options, vocab_size, batch, steps=2)
    torch.set_num_threads(1)
    try:
        one = step_seconds(options, vocab_size, batch, steps=2)
    finally:
        torch.set_num_threads(threads)
    return {"one": one, "all": every, "threads": threads} if one < 0.8 * every else None


# ---- the task ------------------------------------------------------------------------------------


class TextGeneration(Task):
    name = "text_generation"
    kind = "text"
    is_classifier = False
    objective_class = LanguageModelObjective
    default_monitor = "val_loss"
    default_model = "gpt"
    families = ("gpt", "pretrained_lm")  # model families that generate text
    headline = ("bits_per_byte", "exact_match", "rouge_l", "loss", "perplexity")  # SFT: llm/sft.py
    retrain_metric, retrain_higher_is_better = "bits_per_byte", False
    review_gap = ("bits_per_byte", 0.25)
    data_keys = ("text", "tokenizer", "privacy")
    untunable = (
        "a text_generation run reads its corpus as a token stream and trains outside tune's trial loop, so "
        "foundry tune does not search it yet. Train a few configs with --set (train.lr, model.n_layer, "
        "model.n_embd, ...) and compare them with `foundry runs compare RUN_A RUN_B` (val bits_per_byte)."
    )
    starter = """\
# modelfoundry config: pretrain a small GPT on your own text. Train with `foundry train config.yaml`.
task: text_generation
data:
  source: corpus.txt         # a .txt file, a folder of .txt/.md files, or a .jsonl/.csv/.parquet file
  # text: body               # the column holding the documents, for a table
  # tokenizer: {type: bpe, vocab_size: 8192}   # bpe | char (default: chosen from the corpus size)
  privacy: {pii: report}     # personal data: off | report (count) | redact ([EMAIL] ...) | drop documents
model:
  name: gpt
  # n_layer: 4               # default: sized from the corpus and the time budget
  # n_head: 4
  # n_embd: 128
  # block_size: 256          # context in tokens
train:
  max_minutes: 5             # or max_steps: 2000
"""

    def check_config(self, cfg) -> list[str]:
        problems = self.check_monitor(cfg)
        data, train = cfg.data, cfg.train
        if cfg.model.name not in (None, *self.families):
            problems.append(
                f"model.name: {cfg.model.name!r} does not generate text; text_generation trains "
                f"{' or '.join(self.families)}."
            )
        if data.label:
            problems.append(
                "data.label: text_generation learns the text itself and takes no label; remove it."
            )
        if cfg.model.name in (None, "gpt"):
            problems += _fine_tuning_keys(cfg)
        if isinstance(data.tokenizer, str):
            problems.append(
                f"data.tokenizer: {data.tokenizer!r}: text_generation trains its tokenizer on the corpus; "
                "give {type: bpe, vocab_size: 8192} or {type: char}, or leave it out."
            )
        for key, value in (
            ("data.val_source", data.val_source),
            ("data.test_source", data.test_source),
            ("train.folds", train.folds),
            ("train.distill", train.distill),
            ("train.balance_groups", train.balance_groups),
            ("train.loss", train.loss),
        ):
            if value:
                problems.append(f"{key}: not supported by text_generation; remove it.")
        return problems

    def objective(self, train_cfg, target_spec=None):
        return LanguageModelObjective((target_spec or {}).get("bytes_per_token", 1.0))

    def model_text_spec(self, preprocessing: dict) -> dict:
        return {"vocab_size": preprocessing["vocab_size"], "pad_id": preprocessing.get("eos_id") or 0}

    def output_size(self, labels) -> int:
        return 0

    def predictor(self, model, spec: dict, folder):
        from modelfoundry.generation.package import TextGenerator

        return TextGenerator(model, spec, folder)

    def cli_inputs(self, predictor, inputs: list[str]):
        raise UserError(
            "a text_generation model generates text rather than predicting labels: use "
            '`foundry generate RUN "prompt"`.'
        )

    def describe_targets(self, labels) -> str:
        return "next tokens"

    # ---- a run: data, training, evaluation, package ------------------------------------------------

    def run(self, cfg, base_dir: Path, path: Path | None, resume: bool, console, device):
        if cfg.model.name == "pretrained_lm":  # fine-tuning a pretrained LM on instructions: llm/sft.py
            from modelfoundry.llm import sft

            return sft.run(self, cfg, base_dir, path, resume, console, device)
        import torch

        from modelfoundry.generation.tokenizer import train_tokenizer
        from modelfoundry.models.registry import build_model
        from modelfoundry.runfiles import scratch_root
        from modelfoundry.training import distributed

        clock = time.perf_counter()
        data = cfg.data
        report: dict = {}
        parts, blocked = corpus_parts(cfg, base_dir, report)
        part_bytes = {k: sum(len(p.encode("utf-8")) for p in v) for k, v in parts.items()}
        extra: list[str] = []
        if data.feedback is not None:  # foundry retrain: served answers, in the training split only
            extra = feedback_documents(data, base_dir, report)
            part_bytes["train"] += data.feedback.weight * sum(len(t.encode("utf-8")) for t in extra)
        choices = []
        start = None
        if cfg.model.init_from:  # foundry retrain: the champion's tokenizer and weights, trained on
            tokenizer, kind, start = champion_start(cfg, base_dir)
            choices.append(f"tokenizer and weights from model.init_from ({cfg.model.init_from})")
        elif data.tokenizer is not None:
            kind, vocab = data.tokenizer.type, data.tokenizer.vocab_size
        else:
            kind, vocab, why = default_tokenizer(part_bytes["train"])
            choices.append(f"tokenizer {why}")
            console.print(f"chosen: tokenizer {why}", highlight=False)
        if start is None:
            tokenizer = train_tokenizer(kind, parts["train"], vocab)
        # DDP: the other ranks write their own copy in the scratch folder (rank 0 writes the run's)
        folder = path / "tokens" if path else scratch_root() / f"tokens-{distributed.rank()}-{os.getpid()}"
        tokens, per_token = token_files(
            tokenizer, parts, blocked, part_bytes, folder, extra * (data.feedback.weight if extra else 0)
        )
        report["tokens"] = {k: len(v) for k, v in tokens.items()}
        block_size = self._block_size(cfg, len(tokens["train"]), kind, report["source"])
        options, steps, chosen = self._choices(
            cfg, path, resume, tokenizer.vocab_size, tokens, block_size, console
        )
        choices += chosen
        train_cfg, per_epoch = self._train_config(cfg, steps["max_steps"], steps.get("batch_size"))
        console.print(
            f"data: {report['documents']:,} document(s), {report['bytes']:,} bytes; tokens train/val/test "
            f"{'/'.join(f'{len(tokens.get(k, ())):,}' for k in ('train', 'val', 'test'))} "
            f"({kind}, {tokenizer.vocab_size:,} in the vocabulary)",
            highlight=False,
        )
        timings = {"data": time.perf_counter() - clock}
        model = build_model(
            cfg.model.name, (block_size,), 0, {"vocab_size": tokenizer.vocab_size, "pad_id": 0}, **options
        )
        if start is not None:
            load_start(model, start, cfg.model.init_from)
        console.print(
            f"model: gpt with {model.num_parameters():,} parameters ({options['n_layer']} layers, "
            f"{options['n_head']} heads, {options['n_embd']} wide, context {options['block_size']}) on "
            f"{device}; "
            f"{train_cfg.epochs} evaluation intervals of {per_epoch} steps of {train_cfg.batch_size} windows",
            highlight=False,
        )
        windows = RandomWindows(tokens["train"], block_size, train_cfg.batch_size * per_epoch)
        setup = None
        if distributed.world_size() > 1:  # DDP or FSDP: how each batch is split, and the effective batch
            line, setup = distributed.describe(train_cfg, len(windows))
            console.print(line, highlight=False)
        held = {
            k: HeldOutWindows(tokens[k], block_size, EVAL_WINDOWS, per_token[k])
            for k in ("val", "test")
            if k in tokens and len(tokens[k]) >= 2
        }
        objective = LanguageModelObjective(per_token.get("val", 1.0))
        samples: list[dict] = []
        prompt = first_line(parts["val"][0] if parts["val"] else parts["train"][0])
        prompt = tokenizer.decode(tokenizer.encode(prompt)[: block_size // 2])

        def sample(record: dict) -> None:  # after the first and the middle evaluation; the final one below
            if distributed.is_main() and record["epoch"] in {1, (train_cfg.epochs + 1) // 2}:
                text = sample_text(model, tokenizer, prompt)
                samples.append({"after": f"evaluation {record['epoch']}", "prompt": prompt, "text": text})

        from modelfoundry.training.loop import fit

        clock = time.perf_counter()
        threads = torch.get_num_threads()
        if steps.get("threads") and torch.device(device).type == "cpu":
            torch.set_num_threads(steps["threads"])  # chosen by timing both (choose_run); restored below
        try:
            result = fit(
                model,
                windows,
                held.get("val"),
                train_cfg,
                device=device,
                checkpoint_dir=path and path / "checkpoints",
                resume=resume,
                log_dir=path and path / "tensorboard",
                console=console,
                objective=objective,
                on_epoch=sample,
            )
        finally:
            torch.set_num_threads(threads)
        timings["train"] = result.earlier_seconds + time.perf_counter() - clock
        if path is None:  # DDP: a rank other than 0 drops its copy of the tokens
            import shutil

            del windows, held, tokens
            shutil.rmtree(folder, ignore_errors=True)
            return {}, timings
        clock = time.perf_counter()
        metrics: dict = {
            "recipe": {"from": cfg.recipe, "chosen": choices},
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "precision": result.precision,
        }
        if setup:
            metrics["distributed"] = setup
        for name in ("val", "test"):
            if name in held:
                final = HeldOutWindows(tokens[name], block_size, FINAL_WINDOWS, per_token[name])
                metrics[name] = {**score(model, final), "bytes": part_bytes[name], "n": len(final)}
        seconds = sum(r["seconds"] for r in result.history)
        trained_tokens = len(result.history) * len(windows) * block_size
        metrics["throughput"] = throughput(model, options, tokenizer.vocab_size, trained_tokens, seconds)
        metrics["model"] = {
            "parameters": model.num_parameters(),
            **options,
            "vocab_size": tokenizer.vocab_size,
        }
        final = sample_text(model, tokenizer, prompt)
        metrics["samples"] = [
            *samples,
            {"after": "training (the model packaged)", "prompt": prompt, "text": final},
        ]
        metrics["history"] = result.history
        from modelfoundry.evaluate.review import review

        metrics["warnings"] = review(metrics, self) + report.get("warnings", [])
        spec = {
            "task": self.name,
            "model": {"name": cfg.model.name, "options": options},
            "input_shape": [block_size],
            "labels": [],
            "preprocessing": {
                "kind": "text",
                "tokenizer": kind,
                "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id,
                "block_size": block_size,
                "text_column": data.text,
                "pii": data.privacy.pii,
            },
            "target": {"bytes_per_token": per_token.get("test", per_token["train"])},
            "run_id": path.name,
            "created": datetime.now().isoformat(timespec="seconds"),
            "config_dir": str(base_dir.resolve()),
            "test_bits_per_byte": metrics.get("test", {}).get("bits_per_byte"),
        }
        from modelfoundry.predictor import save_package
        from modelfoundry.runfiles import atomic_write_json

        save_package(path / "model", model, spec, tokenizer.files())
        atomic_write_json(path / "data_report.json", report)
        atomic_write_json(path / "metrics.json", metrics)
        self._report(path, cfg, metrics, report)
        timings["evaluate"] = time.perf_counter() - clock
        for split in ("val", "test"):
            if split in metrics:
                m = metrics[split]
                console.print(
                    f"{split}: loss {m['loss']:.4f}  perplexity {m['perplexity']:.2f}  "
                    f"bits per byte {m['bits_per_byte']:.4f}",
                    highlight=False,
                )
        return metrics, timings

    def _block_size(self, cfg, train_tokens: int, kind: str, source) -> int:
        wanted = (cfg.model.model_extra or {}).get("block_size")
        if wanted is not None:
            if train_tokens < wanted + 1:
                raise UserError(
                    f"data.source: {source}: the training split has {train_tokens:,} tokens, fewer than one "
                    f"context window of model.block_size={wanted} + 1. Give more text, or a smaller "
                    "model.block_size."
                )
            return wanted
        if train_tokens < 9:
            raise UserError(
                f"data.source: {source}: the training split has only {train_tokens:,} tokens; a language "
                "model needs at least a few hundred. Give more text."
            )
        default = 128 if kind == "char" else 256
        return min(default, 2 ** int(math.log2(max(8, train_tokens // 4))))

    def _choices(self, cfg, path, resume, vocab_size, tokens, block_size, console):
        """choose_run once per run (DDP: rank 0's, for every rank); a resumed run keeps its first choices."""
        from modelfoundry.training import distributed

        saved = path / "choices.json" if path else None
        if resume and saved and saved.is_file():
            state = json.loads(saved.read_text())
            wanted = (cfg.model.model_extra or {}).get("block_size")
            if wanted is not None and wanted > state["options"]["block_size"]:
                raise UserError(
                    f"model.block_size: {wanted} is above the position table "
                    f"({state['options']['block_size']}) of the run being resumed; resume with its "
                    "block_size, or start a new run."
                )
            state = distributed.broadcast_object(state)
        else:
            state = None
            if distributed.is_main():
                options, steps, chosen = choose_run(
                    cfg, vocab_size, len(tokens["train"]), block_size, console
                )
                state = {"options": options, "steps": steps, "chosen": chosen}
                if saved:
                    saved.write_text(json.dumps(state))
            state = distributed.broadcast_object(state)
        return state["options"], state["steps"], state["chosen"]

    def _train_config(self, cfg, max_steps: int, batch_size: int | None):
        """train.max_steps as the loop's epochs: up to 10 evaluation intervals of equal steps."""
        epochs = max(1, min(10, max_steps))
        per_epoch = math.ceil(max_steps / epochs)
        update = {
            "epochs": epochs,
            "max_steps": per_epoch * epochs,
            "batch_size": batch_size or cfg.train.batch_size,
        }
        return cfg.train.model_copy(update=update), per_epoch

    def _report(self, path, cfg, metrics, report):
        from modelfoundry.config import config_to_dict
        from modelfoundry.evaluate.report import write_report

        write_report(
            path / "report.html",
            title=cfg.name or path.name,
            metrics={k: metrics[k] for k in ("val", "test") if k in metrics},
            history=metrics["history"],
            warnings=metrics["warnings"],
            data_report=report,
            labels=[],
            mistakes=[],
            config=config_to_dict(cfg),
            sections=self.report_sections_of(metrics),
        )

    def report_sections_of(self, metrics: dict) -> list[tuple[str, str, str]]:
        rows = "".join(
            f"<tr><td>{m['loss']:.4f}</td><td>{m['perplexity']:.2f}</td><td>{m['bits_per_byte']:.4f}</td>"
            f"<td>{split}</td></tr>"
            for split, m in ((s, metrics.get(s)) for s in ("val", "test"))
            if m
        )
        table = (
            "<table><tr><th>loss (nats/token)</th><th>perplexity</th><th>bits per byte</th>"
            "<th>split</th></tr>"
            f"{rows}</table>"
        )
        samples = "".join(
            f"<p>after {html.escape(s['after'])}: <b>{html.escape(s['prompt'])}</b>"
            f"<pre>{html.escape(s['text'])}</pre></p>"
            for s in metrics.get("samples", [])
        )
        sections = [("lm", "Language model", table)]
        if samples:
            sections.append(("samples", "Sample generations", samples))
        return sections

    # ---- evaluation of new text ----------------------------------------------------------------------

    def score_source(self, predictor, source: Path) -> dict:
        """`foundry evaluate RUN --data other.txt`: loss, perplexity and bits per byte of new text."""
        from types import SimpleNamespace

        if predictor.spec["model"]["name"] == "pretrained_lm":  # instructions: llm/sft.py scores answers
            from modelfoundry.llm import sft

            return sft.score_file(predictor, source)

        pre = predictor.spec["preprocessing"]
        data = SimpleNamespace(
            text=pre.get("text_column"),
            quoting=True,
            dedupe=False,
            privacy=SimpleNamespace(pii=pre.get("pii", "off")),
        )
        documents, how = read_documents(data, source)
        report: dict = {}
        documents = check_documents(documents, how, data, str(source), report)
        return score_texts(predictor, documents, how == "one file", f"--data: {source}")


def score_texts(predictor, texts: list[str], blocked: bool, origin: str) -> dict:
    """Loss, perplexity and bits per byte of a GPT package on texts: documents (each ended by the end-of-text
    token), or contiguous blocks of one text (`blocked`)."""
    tokenizer = predictor.tokenizer
    ids = tokenizer.encode("".join(texts)) if blocked else tokenizer.encode_documents(texts)
    if len(ids) < 2:
        raise UserError(f"{origin}: too little text to score ({len(ids)} token).")
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    tokens = np.asarray(ids, dtype=np.int64)
    windows = HeldOutWindows(tokens, predictor.block_size, FINAL_WINDOWS, n_bytes / len(ids))
    return {**score(predictor.model, windows), "bytes": n_bytes, "n": len(windows)}


def _fine_tuning_keys(cfg) -> list[str]:
    """train.method and train.lora tune a pretrained_lm; a gpt trains every weight from scratch. A run's saved
    config.yaml (it carries `recipe`) spells out their defaults: only values that differ count there."""
    from modelfoundry.config import TrainConfig

    saved = "recipe" in cfg.model_fields_set
    shown = {"method": repr(cfg.train.method), "lora": cfg.train.lora.model_dump()}
    return [
        f"train.{key}: {shown[key]} is for model.name: pretrained_lm (fine-tuning a pretrained "
        f"model); a gpt trains every weight from scratch and would ignore it. Remove train.{key}, or set "
        "model.name: pretrained_lm to fine-tune a pretrained model."
        for key in ("method", "lora")
        if key in cfg.train.model_fields_set
        and (
            not saved
            or getattr(cfg.train, key) != TrainConfig.model_fields[key].get_default(call_default_factory=True)
        )
    ]


def first_line(text: str, limit: int = 40) -> str:
    """A prompt for the report's samples: the start of the held-out text's first non-empty line."""
    line = next((line for line in text.splitlines() if line.strip()), text)
    return line.strip()[:limit]


def sample_text(model, tokenizer, prompt: str, tokens: int = 120) -> str:
    from modelfoundry.generation.decode import generate

    return generate(model, tokenizer, prompt, tokens, temperature=0.8, top_k=40, seed=0)


def throughput(model, options, vocab_size, tokens: int, seconds: float) -> dict:
    """Training tokens per second and the model FLOPs utilisation against this machine's matmul rate."""
    from modelfoundry.plan import calibrate

    rate = tokens / max(seconds, 1e-9)
    try:
        peak = calibrate.load()["matmul_fp32_flops"]
        where = "calibrated"
    except UserError:
        import torch

        a = torch.randn(1024, 1024)
        peak = 2 * 1024**3 / calibrate._best_seconds(lambda: a @ a, 3)
        where = "measured now"
    used = rate * flops_per_token(options["n_layer"], options["n_embd"], options["block_size"], vocab_size)
    return {"tokens_per_second": rate, "flops_per_second": used, "mfu": used / peak, "matmul_peak": where}
