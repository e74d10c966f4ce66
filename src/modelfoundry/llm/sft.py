"""A `pretrained_lm` run: supervised fine-tuning of a pretrained causal LM, with LoRA or every weight.

1. read the instruction data (llm/instruct.py) and split it, seeded; the test split is kept in the run
   (heldout.jsonl) so `foundry retrain` scores champion and challenger on the very same examples;
2. load the base model as our GPT (llm/convert.py) and score it first on the test split: the response
   loss and greedy answers (exact match, ROUGE-L), so the report always shows the base beside the result;
3. train: LoRA adapters over the frozen weights (llm/lora.py) or the whole model, AdamW over the trainable
   weights, warm-up + cosine, clipping, a validation loss per epoch, a checkpoint of the trainable weights
   after every epoch (resumable), stopped by train.max_minutes;
4. score again, and write metrics.json, the report and the package: the adapter alone plus the base
   model's reference and sha256 (LoRA), or every weight (full).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from modelfoundry.errors import UserError
from modelfoundry.llm import instruct, lora
from modelfoundry.llm.convert import LINEAR_NAMES
from modelfoundry.llm.metrics import exact_match, rouge_l, scores

HELDOUT_FILE = "heldout.jsonl"
CHECKPOINT = "adapter_last.pt"
GENERATE_LIMIT = 200  # test examples answered greedily for exact match / ROUGE-L
MAX_ANSWER_TOKENS = 128
DEFAULTS = {
    "lora": {"lr": 1e-3, "epochs": 2, "batch_size": 8},
    "full": {"lr": 5e-5, "epochs": 2, "batch_size": 8},
}


def run(task, cfg, base_dir: Path, path: Path | None, resume: bool, console, device) -> tuple[dict, dict]:
    from modelfoundry.builder import model_options
    from modelfoundry.data.prepare import resolve_source
    from modelfoundry.models.pretrained_lm import build_pretrained_lm
    from modelfoundry.training import distributed

    if distributed.world_size() > 1:
        raise UserError(
            "model.name: pretrained_lm fine-tunes in one process; run it without torchrun (--nproc/--nnodes)."
        )
    clock = time.perf_counter()
    options = model_options(cfg, base_dir)
    method = cfg.train.method
    model = build_pretrained_lm((0,), 0, **options)
    block_size = model.config.block_size  # model.block_size, else the default context (llm/convert.py)
    tokenizer, base = model.tokenizer, model.base
    console.print(f"base model: {base['description']} (sha256 {base['sha256'][:12]}…)", highlight=False)
    if resume:
        check_resumable(path, base)

    source = resolve_source(cfg.data.source, base_dir)
    parts, report = split_examples(cfg, source, base_dir, tokenizer, block_size)
    continued = source.suffix.lower() == ".txt"
    data = {k: instruct.Batches(v["examples"], tokenizer.pad_id) for k, v in parts.items()}
    if cfg.train.packing:  # training rows packed; evaluation keeps one example per row
        data["train"] = instruct.Packed(parts["train"]["examples"], tokenizer.pad_id, block_size)
        console.print(
            f"packing: {len(parts['train']['examples'])} training examples in {len(data['train'])} rows of "
            f"up to {block_size} tokens",
            highlight=False,
        )
    console.print(
        "data: "
        + ", ".join(f"{k} {len(v)}" for k, v in data.items())
        + (" windows of text (continued pretraining)" if continued else " examples")
        + f"; {data['train'].tokens_learnt:,} training tokens learnt",
        highlight=False,
    )
    timings = {"data": time.perf_counter() - clock}
    model.to(device)

    if method == "lora":  # bad targets stop the run now, not after the base model's evaluation
        lora.targeted(model, cfg.train.lora.targets, LINEAR_NAMES)
    clock = time.perf_counter()  # the base model as it is, before any adapter or init_from
    test = parts.get("test")
    base_scores = evaluate(model, tokenizer, test, data.get("test"), continued) if test and path else {}
    timings["evaluate_base"] = time.perf_counter() - clock
    if base_scores:
        console.print(f"base model on test: {_line(base_scores)}", highlight=False)

    hp, choices = hyperparameters(cfg, method)
    if method == "lora":
        targets = cfg.train.lora.targets
        lora.add_lora(
            model, targets, cfg.train.lora.r, cfg.train.lora.alpha, cfg.train.lora.dropout, LINEAR_NAMES
        )
    if cfg.model.init_from:
        choices.append(start_from(model, cfg, base_dir, base, method))
    trainable, total = lora.trainable_parameters(model)
    console.print(
        f"model: {total:,} parameters, {trainable:,} trained ({method}"
        + (f", r={cfg.train.lora.r}, targets {targets}" if method == "lora" else "")
        + f"); {hp['epochs']} epoch(s) of batches of {hp['batch_size']}, lr {hp['lr']:g} on {device}",
        highlight=False,
    )

    clock = time.perf_counter()
    history, seconds_trained, tokens_trained = train(
        model, data["train"], data.get("val"), cfg, hp, path, resume, base, console
    )
    timings["train"] = time.perf_counter() - clock
    if path is None:
        return {}, timings

    clock = time.perf_counter()
    metrics: dict = {
        "recipe": {"from": cfg.recipe, "chosen": choices},
        "method": method,
        "base_model": base,
        "parameters": {"total": total, "trainable": trainable},
        "epochs_run": len(history),
        "history": history,
        "throughput": {
            "tokens_per_second": tokens_trained / max(seconds_trained, 1e-9),
            "tokens": tokens_trained,
        },
    }
    if "val" in data:
        metrics["val"] = response_loss(model, data["val"])
    if test:
        metrics["test"] = evaluate(model, tokenizer, test, data["test"], continued)
        metrics["base"] = {"test": {k: v for k, v in base_scores.items() if k != "answers"}}
        metrics["examples"] = answer_table(
            test, base_scores.get("answers"), metrics["test"].pop("answers", None)
        )
        console.print(f"fine-tuned on test: {_line(metrics['test'])}", highlight=False)
    if device.type == "cpu":
        metrics["plan"] = plan_vs_measured(
            model, cfg, method, total, tokenizer.vocab_size, metrics["throughput"], seconds_trained, hp
        )
    save_run(task, cfg, base_dir, path, model, tokenizer, metrics, report, parts, block_size)
    timings["evaluate"] = time.perf_counter() - clock
    return metrics, timings


def plan_vs_measured(model, cfg, method, total, vocab_size, throughput, seconds, hp) -> dict:
    """What `foundry plan finetune --gpu cpu` predicts for this run's tokens beside what it measured, as
    classification runs keep (plan/check.py): training seconds, and memory against the process's peak RSS."""
    import resource

    from modelfoundry.plan import calibrate
    from modelfoundry.plan.cli import training_plan
    from modelfoundry.plan.models import _gpt_spec

    measured = {
        "measured_seconds": seconds,
        "measured_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "tokens": throughput["tokens"],
    }
    try:
        mfu = calibrate.load()["mfu"]
    except UserError as exc:  # no calibration: the run still finishes, the record says why
        return {**measured, "predicted_seconds": None, "note": str(exc)}
    spec = _gpt_spec(
        "this run", float(total), dataclasses.asdict(model.config), {"vocab_size": vocab_size}, "this run"
    )
    rank = cfg.train.lora.r if method == "lora" else 16
    rows = training_plan(
        spec, max(1, throughput["tokens"]), "cpu", 1, mfu, None, "none", "adamw", None, 1, False, method, rank
    )["estimates"]
    predicted = rows["time_seconds"]["value"]
    return {
        **measured,
        "predicted_seconds": predicted,
        "seconds_ratio": seconds / predicted if predicted else None,
        "predicted_states_gb": rows["states_gb"]["value"],
        "mfu_assumed": mfu,
        "formula": rows["training_flops"]["formula"],
        "command": f"foundry plan finetune --run RUN --method {method} --lora-rank {rank} --tokens "
        f"{throughput['tokens']} --gpu cpu --mfu {mfu:.2f}",
    }


def _line(m: dict) -> str:
    out = f"response loss {m['loss']:.4f}  perplexity {m['perplexity']:.2f}"
    if "exact_match" in m:
        out += f"  exact match {m['exact_match']:.3f}  ROUGE-L {m['rouge_l']:.3f}"
    return out


def hyperparameters(cfg, method: str) -> tuple[dict, list[str]]:
    """lr, epochs and batch size: the user's, else this method's defaults (said in `choices`)."""
    hp, choices = {}, []
    for key, default in DEFAULTS[method].items():
        if cfg.user_set(f"train.{key}"):
            hp[key] = getattr(cfg.train, key)
        else:
            hp[key] = default
            choices.append(f"train.{key} {default:g} ({method} fine-tuning default)")
    return hp, choices


def start_from(model, cfg, base_dir: Path, base: dict, method: str) -> str:
    """`model.init_from` (retrain: the champion): its adapter, or every weight of a full fine-tune, loaded
    into `model` when it was trained on the same base model (sha256) with the same adapter shape."""
    from safetensors.torch import load_file

    from modelfoundry.data import text
    from modelfoundry.runfiles import package_folder

    folder = package_folder(text.resolve_path(cfg.model.init_from, base_dir))
    spec = json.loads((folder / "model.json").read_text())
    options = spec["model"]["options"]
    if spec["model"]["name"] != "pretrained_lm" or options.get("base_sha256") != base["sha256"]:
        raise UserError(
            f"model.init_from: {folder} was not fine-tuned from this base model (sha256 "
            f"{str(options.get('base_sha256'))[:12]}… there, {base['sha256'][:12]}… here). Start from a run "
            "of the same base model file, or remove model.init_from."
        )
    adapter = options.get("adapter")
    ours = {"r": cfg.train.lora.r, "alpha": cfg.train.lora.alpha, "targets": cfg.train.lora.targets}
    if (method == "lora") != bool(adapter) or (adapter and adapter != ours):
        raise UserError(
            f"model.init_from: {folder} holds "
            f"{'an adapter ' + str(adapter) if adapter else 'a full fine-tune'}"
            f"; this run trains {'an adapter ' + str(ours) if method == 'lora' else 'every weight'}. Use the "
            "same train.method and train.lora as that run."
        )
    state = load_file(str(folder / "model.safetensors"))
    if adapter:
        lora.load_adapter(model, state)
    else:
        if model.config.tie_embeddings:
            state["lm_head.weight"] = state["wte.weight"]
        model.load_state_dict(state)
    return f"started from {folder} ({'its adapter' if adapter else 'its weights'})"


# ---- data --------------------------------------------------------------------------------------


def split_examples(cfg, source: Path, base_dir: Path, tokenizer, block_size: int) -> tuple[dict, dict]:
    """{"train"|"val"|"test": {"conversations", "examples"}} split seeded (data.split); the data report."""
    split = cfg.data.split
    if source.suffix.lower() == ".txt":
        examples = instruct.read_examples(source, tokenizer, block_size)
        conversations = [None] * len(examples)
    else:
        conversations = instruct.read_conversations(source)
        examples = instruct.tokenize(tokenizer, conversations, block_size, str(source))
    n = len(examples)
    order = np.random.default_rng(split.seed).permutation(n)
    n_test = round(n * split.test) if n >= 3 else 0
    n_val = round(n * split.val) if n >= 3 else 0
    if n - n_test - n_val < 1:
        raise UserError(f"data.source: {source} has {n} examples: too few to split; give more.")
    pieces = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    parts = {
        k: {"conversations": [conversations[i] for i in idx], "examples": [examples[i] for i in idx]}
        for k, idx in pieces.items()
        if len(idx)
    }
    report = {
        "source": str(source),
        "n_examples": n,
        "splits": {k: len(v["examples"]) for k, v in parts.items()},
        "split": f"seeded ({split.seed}): val {split.val:g}, test {split.test:g}",
        "kind": "text windows (continued pretraining)" if conversations[:1] == [None] else "instructions",
    }
    return parts, report


# ---- training ----------------------------------------------------------------------------------


def train(model, data, val, cfg, hp: dict, path: Path | None, resume: bool, base: dict, console):
    """Returns (history, seconds of training, tokens trained on). The model keeps the best epoch's
    trainable weights (by validation loss) when there is a validation split."""
    from modelfoundry.training.checkpoint import CheckpointWriter

    train_cfg = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in params if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": train_cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=hp["lr"],
    )
    batches = math.ceil(len(data) / hp["batch_size"])
    steps_per_epoch = math.ceil(batches / train_cfg.accumulate)
    total_steps = max(1, steps_per_epoch * hp["epochs"])
    warmup = train_cfg.warmup if cfg.user_set("train.warmup") else 0.05

    def lr_at(step: int) -> float:
        warm = max(1, int(total_steps * warmup))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    checkpoint = path / "checkpoints" / CHECKPOINT if path else None
    history, start_epoch, best = [], 0, {"loss": math.inf, "state": None, "epoch": 0}
    seconds, tokens, steps_done = 0.0, 0, 0
    if resume:
        state = check_resumable(path, base)
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        seconds, tokens = state["seconds"], state["tokens"]
        steps_done = history[-1].get("steps", 0) if history else 0
    writer = CheckpointWriter(checkpoint) if checkpoint else None
    budget = (train_cfg.max_minutes or math.inf) * 60
    for epoch in range(start_epoch, hp["epochs"]):
        started, cpu_started, loss_sum, count = time.perf_counter(), time.process_time(), 0.0, 0
        torch.manual_seed(train_cfg.seed + epoch)
        generator = torch.Generator().manual_seed(train_cfg.seed * 1_000_003 + epoch)
        model.train()
        out_of_time = False
        for i, (ids, labels, *packed) in enumerate(
            data.batches(hp["batch_size"], shuffle=True, generator=generator)
        ):
            device = next(model.parameters()).device
            ids, labels = ids.to(device), labels.to(device)
            segments = packed[0].to(device) if packed else None  # instruct.Packed: examples of each row
            logits, targets = learnt_logits(model, ids, labels, segments)
            loss = F.cross_entropy(logits.float(), targets)
            (loss / train_cfg.accumulate).backward()
            if (i + 1) % train_cfg.accumulate == 0 or i + 1 == batches:
                # clipped at 1 unless train.grad_clip says otherwise: fine-tuning steps stay small
                torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip or 1.0)
                optimizer.step()
                steps_done += 1
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            learnt = int((labels != instruct.IGNORE).sum())
            loss_sum += loss.item() * learnt
            count += learnt
            tokens += ids.numel()
            if seconds + time.perf_counter() - started > budget:
                out_of_time = True
                break
        seconds += time.perf_counter() - started
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(count, 1),
            "lr": scheduler.get_last_lr()[0],
        }
        if val is not None:
            record.update({f"val_{k}": v for k, v in response_loss(model, val).items()})
        record["seconds"] = time.perf_counter() - started
        record["cpu_seconds"] = time.process_time() - cpu_started  # every thread's: on a shared machine
        record["steps"] = steps_done  # optimizer steps so far
        history.append(record)
        if val is None or record["val_loss"] < best["loss"]:
            best = {
                "loss": record.get("val_loss", 0.0),
                "epoch": epoch + 1,
                "state": {n: p.detach().clone() for n, p in named.items()},
            }
        console.print(
            f"epoch {epoch + 1}/{hp['epochs']}  loss {record['train_loss']:.4f}"
            + (f"  val_loss {record['val_loss']:.4f}" if "val_loss" in record else "")
            + f"  {record['seconds']:.0f}s",
            highlight=False,
        )
        if writer:
            writer.save(
                {
                    "trainable": {n: p.detach() for n, p in named.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "best": best,
                    "seconds": seconds,
                    "tokens": tokens,
                    "base_sha256": base["sha256"],
                }
            )
        if out_of_time:
            console.print(
                f"time budget: train.max_minutes={train_cfg.max_minutes:g} used; stopping", highlight=False
            )
            break
    if writer:
        writer.wait()
    if best["state"] is not None and train_cfg.restore_best:
        with torch.no_grad():
            for name, value in best["state"].items():
                named[name].copy_(value)
    model.eval()
    return history, seconds, tokens


def check_resumable(path: Path | None, base: dict) -> dict:
    """The checkpoint a resumed run continues from, if it was trained on this very base model."""
    from modelfoundry.training.checkpoint import load_checkpoint

    checkpoint = path / "checkpoints" / CHECKPOINT if path else None
    if checkpoint is None or not checkpoint.is_file():
        raise UserError(f"--resume: no checkpoint at {checkpoint}; start the run again without --resume.")
    state = load_checkpoint(checkpoint)
    if state["base_sha256"] != base["sha256"]:
        raise UserError(
            f"--resume: {path.name} was trained on a base model with sha256 {state['base_sha256'][:12]}…, "
            f"and model.path now gives one with sha256 {base['sha256'][:12]}… ({base['description']}). "
            "Resume with the same base model file, or start a new run."
        )
    return state


# ---- evaluation --------------------------------------------------------------------------------


def learnt_logits(model, ids, labels, segments=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits (N, V) of the N learnt positions of a batch and their labels (N,). The output layer runs on
    those positions alone: a response is a few tokens of a long prompt, and the 49k-word output layer
    over every position cost SmolLM2 a fifth of each step (and its (B, T, V) logits most of the memory).
    GPT ends with `lm_head(norm(x))`, so with lm_head set aside the model returns the normed states.
    segments (B, T): packed rows (instruct.Packed), each example attending to itself only."""
    head = model.lm_head
    model.lm_head = torch.nn.Identity()
    try:
        hidden = model(ids) if segments is None else model(ids, segments=segments)  # (B, T, C)
    finally:
        model.lm_head = head
    learnt = labels != instruct.IGNORE
    return head(hidden[learnt]), labels[learnt]


@torch.inference_mode()
def response_loss(model, data: instruct.Batches, batch_size: int = 8) -> dict:
    """Mean loss per learnt token (the responses) and its perplexity."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for ids, labels in data.batches(batch_size):
        logits, targets = learnt_logits(model, ids.to(device), labels.to(device))
        total += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        count += len(targets)
    model.train(was)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def evaluate(model, tokenizer, part: dict, data: instruct.Batches, continued: bool) -> dict:
    """Response loss of a split, and (instruction data) greedy answers scored against the references."""
    from modelfoundry.llm.generate import greedy_answers

    out = response_loss(model, data)
    if continued:
        return out
    conversations = part["conversations"][:GENERATE_LIMIT]
    prompts = [tokenizer.encode(tokenizer.apply_chat(c[:-1])) for c in conversations]
    references = [c[-1]["content"] for c in conversations]
    longest = max(len(tokenizer.encode(r)) for r in references)
    answers = greedy_answers(model, tokenizer, prompts, min(MAX_ANSWER_TOKENS, longest + 8))
    return {**out, **scores(answers, references), "answers": answers}


def score_file(predictor, source: Path) -> dict:
    """`foundry evaluate RUN --data file`: response loss, and greedy answers' exact match and ROUGE-L
    against the file's responses (a .txt file: the loss of its text)."""
    model, tokenizer = predictor.model, predictor.tokenizer
    block_size = predictor.spec["preprocessing"]["block_size"]
    examples = instruct.read_examples(source, tokenizer, block_size)
    continued = source.suffix.lower() == ".txt"
    part = {"conversations": [] if continued else instruct.read_conversations(source)}
    scored = evaluate(model, tokenizer, part, instruct.Batches(examples, tokenizer.pad_id), continued)
    scored.pop("answers", None)
    return scored


def answer_table(part: dict, base_answers, answers, worst: int = 10, sample: int = 10) -> dict:
    """The report's rows (prompt, reference, base answer, fine-tuned answer): the worst by ROUGE-L of the
    fine-tuned answer, and a seeded sample."""
    if answers is None:
        return {}
    rows = []
    for i, answer in enumerate(answers):
        turns = part["conversations"][i]
        reference = turns[-1]["content"]
        rows.append(
            {
                "prompt": turns[-2]["content"],
                "reference": reference,
                "base": base_answers[i] if base_answers else None,
                "fine_tuned": answer,
                "exact_match": exact_match(answer, reference),
                "rouge_l": rouge_l(answer, reference),
            }
        )
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["rouge_l"], -len(rows[i]["reference"])))
    picked = np.random.default_rng(0).permutation(len(rows))[:sample].tolist()
    return {"worst": [rows[i] for i in order[:worst]], "sample": [rows[i] for i in sorted(picked)]}


# ---- the run's files ---------------------------------------------------------------------------


def save_run(task, cfg, base_dir, path, model, tokenizer, metrics, report, parts, block_size) -> None:
    import tempfile

    from modelfoundry.predictor import save_package
    from modelfoundry.runfiles import atomic_write, atomic_write_json

    base = metrics["base_model"]
    adapter = (
        {"r": cfg.train.lora.r, "alpha": cfg.train.lora.alpha, "targets": cfg.train.lora.targets}
        if metrics["method"] == "lora"
        else None
    )
    options = {
        "path": base["reference"],
        "block_size": block_size,
        "base_sha256": base["sha256"],
        "adapter": adapter,
    }
    spec = {
        "task": task.name,
        "model": {"name": cfg.model.name, "options": options},
        "input_shape": [block_size],
        "labels": [],
        "preprocessing": {
            "kind": "text",
            "tokenizer": "huggingface",
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
            "block_size": block_size,
        },
        "target": {},
        "base_model": base,
        "method": metrics["method"],
        # the whole model's shape and size, for `foundry plan --run` (the package may hold an adapter alone)
        "architecture": dataclasses.asdict(model.config),
        "parameters": metrics["parameters"]["total"],
        "run_id": path.name,
        "created": datetime.now().isoformat(timespec="seconds"),
        "config_dir": str(base_dir.resolve()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(Path(tmp))
        files = {p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()}
    weights = PackageWeights(model)
    save_package(path / "model", weights, spec, files)
    if "test" in parts and parts["test"]["conversations"][:1] != [None]:
        lines = "".join(
            json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in parts["test"]["conversations"]
        )
        atomic_write(path / HELDOUT_FILE, lines)
    metrics["warnings"] = report.get("warnings", [])
    atomic_write_json(path / "data_report.json", report)
    atomic_write_json(path / "metrics.json", metrics)
    write_report(path, cfg, metrics, report)


class PackageWeights(torch.nn.Module):
    """What a package stores of a model: a LoRA model's adapter alone (the base is referenced by path and
    sha256), else every weight (the tied output layer once)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def state_dict(self, *args, **kwargs):
        if lora.lora_layers(self.model):
            return lora.adapter_state(self.model)
        state = self.model.state_dict()
        if self.model.config.tie_embeddings:
            state.pop("lm_head.weight", None)
        return state


def write_report(path: Path, cfg, metrics: dict, report: dict) -> None:
    from modelfoundry.config import config_to_dict
    from modelfoundry.evaluate.report import write_report as write

    write(
        path / "report.html",
        title=cfg.name or path.name,
        metrics={},
        history=metrics["history"],
        warnings=metrics.get("warnings"),
        data_report=report,
        labels=[],
        mistakes=[],
        config=config_to_dict(cfg),
        sections=report_sections(metrics),
    )


def report_sections(metrics: dict) -> list[tuple[str, str, str]]:
    rows = []
    for name, m in (("base model", metrics.get("base", {}).get("test")), ("fine-tuned", metrics.get("test"))):
        if m:
            rows.append(
                f"<tr><td>{name}</td><td>{m['loss']:.4f}</td><td>{m['perplexity']:.2f}</td>"
                f"<td>{m.get('exact_match', float('nan')):.3f}</td>"
                f"<td>{m.get('rouge_l', float('nan')):.3f}</td></tr>"
            )
    table = (
        "<table><tr><th>model (test split)</th><th>response loss</th><th>perplexity</th><th>exact match</th>"
        f"<th>ROUGE-L</th></tr>{''.join(rows)}</table>"
    )
    sections = [("sft", "Fine-tuned vs base model", table)]
    for key, heading in (("worst", "Worst answers"), ("sample", "A sample of answers")):
        shown = metrics.get("examples", {}).get(key)
        if shown:
            body = "".join(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(r[c]))}</td>"
                    for c in ("prompt", "reference", "base", "fine_tuned")
                )
                + f"<td>{r['rouge_l']:.2f}</td></tr>"
                for r in shown
            )
            sections.append(
                (
                    key,
                    heading,
                    (
                        "<table><tr><th>prompt</th><th>reference</th><th>base model answer</th>"
                        f"<th>fine-tuned answer</th><th>ROUGE-L</th></tr>{body}</table>"
                    ),
                )
            )
    return sections
