"""Training-loop overhead: foundry's `fit` against a minimal hand-written PyTorch loop, Lightning and Keras 3.

All train the digits CNN (Keras: the same layers) on the same tensors from `prepare` (builtin:digits): Adam
lr 1e-3, batch 64, reshuffled every epoch, val loss + accuracy after every epoch. After a 1-epoch warm-up of
each, every round runs each contender once, in rotating order. Reported: median samples/s (train examples x
epochs / wall seconds) and its ratio to the hand-written loop (target: foundry >= 0.97). Rows marked (info):
`fit` without checkpoints/TensorBoard/progress bar (what those cost) and `modelfoundry.train()` (whole
run).

Run from the repo root, in a terminal (so foundry's progress bar is live, as a user sees it):
    .venv/bin/python bench/train_overhead.py                   # 10 epochs, 3 rounds
    .venv/bin/python bench/train_overhead.py --epochs 2 --rounds 1 --skip keras lightning   # quick check
    .venv/bin/python bench/train_overhead.py --write           # also record it in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Self

import lightning as L
import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelfoundry.config import load_config
from modelfoundry.data.prepare import ArrayData, prepare
from modelfoundry.models.registry import build_model
from modelfoundry.runner import train
from modelfoundry.training.loop import fit
from record import write_section

os.environ["KERAS_BACKEND"] = "torch"  # read when keras is first imported, in keras_model()
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no "GPU available: False" on every fit
BATCH, LR, VAL_BATCH = 64, 1e-3, 512  # VAL_BATCH: what foundry's predict_logits uses
COMPARED = ["hand-written", "foundry", "lightning", "keras"]
INFO = ["foundry-bare", "foundry-train"]
LABELS = {
    "hand-written": "hand-written PyTorch",
    "foundry": "foundry `fit` (defaults)",
    "lightning": "PyTorch Lightning",
    "keras": "Keras 3 (torch backend)",
    "foundry-bare": "(info) foundry `fit`, no checkpoints/TensorBoard/progress bar",
    "foundry-train": "(info) `modelfoundry.train()`, whole run",
}
SETTINGS = {
    "hand-written": (
        "randperm + slicing, CrossEntropyLoss, Adam; eval + inference_mode validation; nothing else"
    ),
    "foundry": (
        "fit() defaults: LambdaLR (constant), best-weights copy, checkpoint every epoch (background "
        "thread, fsync), TensorBoard, rich progress bar, val loss/accuracy/F1"
    ),
    "lightning": (
        "Trainer(accelerator='cpu', devices=1, logger=False, enable_checkpointing=False, "
        "enable_progress_bar=False, enable_model_summary=False), other defaults (num_sanity_val_steps=2); "
        "DataLoader(TensorDataset, shuffle=True, num_workers=0); self.log val loss/accuracy"
    ),
    "keras": (
        "model.fit(numpy NHWC, batch_size=64, shuffle=True, validation_data, validation_batch_size=512, "
        "verbose=0), metrics=['accuracy'] (train accuracy too); BN momentum 0.9/eps 1e-5 and Adam eps 1e-8 "
        "as torch; Keras' own weight init (glorot)"
    ),
}


@dataclasses.dataclass
class Setup:
    train: ArrayData
    val: ArrayData
    epochs: int
    precision: str  # foundry's train.precision

    def config(self, seed: int) -> dict:
        return {
            "task": "image_classification",
            "data": {"source": "builtin:digits"},
            "model": {"name": "cnn"},
            "train": {
                "epochs": self.epochs,
                "batch_size": BATCH,
                "optimizer": "adam",
                "lr": LR,
                "seed": seed,
                "precision": self.precision,
            },
        }


class Clock:
    """Wall seconds of a `with` block, in `.wall`."""

    def __enter__(self) -> Self:
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall


def cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", (1, 8, 8), 10)


@torch.inference_mode()
def validate(model: nn.Module, val: ArrayData) -> tuple[float, float]:
    model.eval()
    logits = torch.cat(
        [model(val.inputs[i : i + VAL_BATCH]) for i in range(0, len(val), VAL_BATCH)]
    )  # (N, 10)
    accuracy = (logits.argmax(1) == val.targets).float().mean()
    return nn.functional.cross_entropy(logits, val.targets).item(), accuracy.item()


def run_hand_written(setup: Setup, seed: int) -> tuple[Clock, float]:
    model, train = cnn(seed), setup.train
    with Clock() as clock:
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(seed)
        for _ in range(setup.epochs):
            model.train()
            order = torch.randperm(len(train), generator=generator)
            for i in range(0, len(train), BATCH):
                idx = order[i : i + BATCH]
                loss = loss_fn(model(train.inputs[idx]), train.targets[idx])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            _, accuracy = validate(model, setup.val)
    return clock, accuracy


def run_foundry(setup: Setup, seed: int, extras: bool = True) -> tuple[Clock, float]:
    """extras=False: no checkpoints, no TensorBoard, and a console that is no terminal (so no progress
    bar)."""
    cfg, _ = load_config(setup.config(seed))
    model, tmp = cnn(seed), Path(tempfile.mkdtemp())
    console = Console(stderr=True) if extras else Console(file=io.StringIO())
    with Clock() as clock:
        result = fit(
            model,
            setup.train,
            setup.val,
            cfg.train,
            device=torch.device("cpu"),
            console=console,
            checkpoint_dir=tmp / "checkpoints" if extras else None,
            log_dir=tmp / "tb" if extras else None,
        )
    shutil.rmtree(tmp)
    run_foundry.precision = result.precision  # what train.precision resolved to, for the notes
    return clock, result.history[-1]["val_accuracy"]


def run_foundry_train(setup: Setup, seed: int) -> tuple[Clock, float]:
    with tempfile.TemporaryDirectory() as tmp, Clock() as clock:
        run = train(setup.config(seed), run_dir=Path(tmp) / "run", console=Console(stderr=True))
    return clock, run.metrics["history"][-1]["val_accuracy"]


class LightningClassifier(L.LightningModule):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.loss_fn = model, nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        return self.loss_fn(self.model(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        logits, targets = self.model(batch[0]), batch[1]
        self.log("val_loss", self.loss_fn(logits, targets))
        self.log("val_accuracy", (logits.argmax(1) == targets).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=LR)


def run_lightning(setup: Setup, seed: int) -> tuple[Clock, float]:
    L.seed_everything(seed, verbose=False)
    module, train, val = LightningClassifier(cnn(seed)), setup.train, setup.val
    with Clock() as clock:
        train_loader = DataLoader(TensorDataset(train.inputs, train.targets), batch_size=BATCH, shuffle=True)
        val_loader = DataLoader(TensorDataset(val.inputs, val.targets), batch_size=VAL_BATCH)
        trainer = L.Trainer(
            max_epochs=setup.epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, train_loader, val_loader)
    return clock, trainer.callback_metrics["val_accuracy"].item()


def keras_model(seed: int):
    """The CNN of models/cnn.py in Keras: [conv3x3 (no bias)-BN-ReLU] x 2, max-pool 2, the same at width 64,
    global average pool, dropout 0.2, dense 10 (logits). Input (B, 8, 8, 1), channels last."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)

    def conv_bn_relu(width):  # momentum/epsilon as torch's BatchNorm2d defaults
        return [
            layers.Conv2D(width, 3, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
            layers.ReLU(),
        ]

    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            *conv_bn_relu(32),
            *conv_bn_relu(32),
            layers.MaxPooling2D(2),
            *conv_bn_relu(64),
            *conv_bn_relu(64),
            layers.GlobalAveragePooling2D(),
            layers.Dropout(0.2),
            layers.Dense(10),
        ]
    )


def run_keras(setup: Setup, seed: int) -> tuple[Clock, float]:
    import keras

    x, y = setup.train.inputs.permute(0, 2, 3, 1).numpy(), setup.train.targets.numpy()  # (N, 8, 8, 1)
    x_val, y_val = setup.val.inputs.permute(0, 2, 3, 1).numpy(), setup.val.targets.numpy()
    model = keras_model(seed)
    with Clock() as clock:
        model.compile(
            optimizer=keras.optimizers.Adam(LR, epsilon=1e-8),
            metrics=["accuracy"],
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        history = model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=setup.epochs,
            shuffle=True,
            verbose=0,
            validation_data=(x_val, y_val),
            validation_batch_size=VAL_BATCH,
        )
    return clock, history.history["val_accuracy"][-1]


RUNNERS = {
    "hand-written": run_hand_written,
    "foundry": run_foundry,
    "lightning": run_lightning,
    "keras": run_keras,
    "foundry-bare": lambda setup, seed: run_foundry(setup, seed, extras=False),
    "foundry-train": run_foundry_train,
}


def parameter_counts() -> str:
    """The torch CNN and its Keras twin should match: trainable parameters + BN running statistics."""
    model, twin = cnn(0), keras_model(0)
    stats = sum(b.numel() for name, b in model.named_buffers() if "num_batches" not in name)
    size = lambda weights: sum(int(np.prod(w.shape)) for w in weights)  # noqa: E731
    return (
        f"parameters: torch {sum(p.numel() for p in model.parameters()):,} trainable + {stats:,} BN "
        f"statistics; Keras {size(twin.trainable_weights):,} trainable + "
        f"{size(twin.non_trainable_weights):,} non-trainable"
    )


def report(runs: dict[str, list[tuple[Clock, float]]], setup: Setup, rounds: int) -> str:
    """A markdown table (median samples/s, ratios to hand-written, final val accuracy) and notes."""
    samples, names = len(setup.train) * setup.epochs, list(runs)
    wall = {n: [clock.wall for clock, _ in runs[n]] for n in names}
    median = {n: statistics.median(wall[n]) for n in names}
    ratio = {n: median["hand-written"] / median[n] for n in names}  # samples/s ratio = inverse time ratio
    rows = [
        "| contender | samples/s (median) | vs hand-written | per-round ratios | val acc (mean) |",
        "|---|---:|---:|---|---:|",
    ]
    for n in names:
        per_round = " ".join(f"{h / w:.2f}" for h, w in zip(wall["hand-written"], wall[n]))
        rows.append(
            f"| {LABELS[n]} | {samples / median[n]:,.0f} | {ratio[n]:.3f} | {per_round} | "
            f"{statistics.mean(a for _, a in runs[n]):.4f} |"
        )
    notes = [
        (
            f"digits {len(setup.train)} train / {len(setup.val)} val examples, {setup.epochs} epochs, "
            f"{rounds} rounds (rotating order), {torch.get_num_threads()} torch threads; samples/s = train "
            "examples x epochs / wall seconds; per-round ratios show the noise; val acc after the last epoch"
        )
    ]
    if "keras" in names:
        notes.append(parameter_counts())
    if "foundry" in names:
        bar = (
            "live"
            if Console(stderr=True).is_terminal
            else "not shown (stderr is no terminal: a line per epoch)"
        )
        resolved = getattr(run_foundry, "precision", "?")
        warning = " -- NOT fp32 like the others, so this compares precisions" if resolved != "fp32" else ""
        notes.append(
            f"foundry: train.precision={setup.precision} ran as {resolved}{warning}; progress bar {bar}"
        )
        verdict = "meets" if ratio["foundry"] >= 0.97 else "is BELOW"
        notes.append(f"foundry / hand-written samples/s = {ratio['foundry']:.3f}: {verdict} the 0.97 target")
        if "foundry-bare" in names:
            extras = 1 - median["foundry-bare"] / median["foundry"]
            notes.append(
                f"checkpoints + TensorBoard + progress bar: {extras:.1%} of foundry's time; "
                f"its bare loop: {ratio['foundry-bare']:.3f} x hand-written"
            )
    notes += [f"{LABELS[n]}: {SETTINGS[n]}" for n in COMPARED if n in names]
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {note}" for note in notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="round r uses seed + r for every contender")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32"], help="foundry's train.precision"
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=COMPARED[1:] + INFO, help="contenders to leave out"
    )
    parser.add_argument("--write", action="store_true", help="record the table in bench/RESULTS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|logging interval|LeafSpec).*")
    home = tempfile.TemporaryDirectory(prefix="foundry-bench-")  # removed at exit
    os.environ["FOUNDRY_HOME"] = home.name  # train()'s run registry goes here, not into ./runs
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    data = prepare(*load_config({"task": "image_classification", "data": {"source": "builtin:digits"}}))
    setup = Setup(data.train, data.val, args.epochs, args.precision)
    names = [n for n in COMPARED + INFO if n not in args.skip]
    log(
        f"digits: {len(setup.train)} train / {len(setup.val)} val; "
        f"{args.epochs} epochs x {args.rounds} rounds"
    )
    for name in names:  # warm-up: imports, oneDNN primitives, first-call caches, foundry's precision probe
        log(f"warm-up {name}")
        RUNNERS[name](dataclasses.replace(setup, epochs=1), args.seed)
    runs: dict[str, list[tuple[Clock, float]]] = {n: [] for n in names}  # (clock, final val accuracy)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            clock, accuracy = RUNNERS[name](setup, args.seed + r)
            runs[name].append((clock, accuracy))
            log(
                f"round {r + 1}/{args.rounds} {name}: {clock.wall:.2f} s, "
                f"{len(setup.train) * args.epochs / clock.wall:,.0f} samples/s, val acc {accuracy:.4f}"
            )
            if torch.get_num_threads() != threads:
                raise SystemExit(
                    f"{name} changed torch's threads from {threads} to {torch.get_num_threads()}"
                )
    body = report(runs, setup, args.rounds)
    print(body)
    if args.write:
        log(
            "written to "
            f"{write_section('train_overhead', body, {n: version(n) for n in ('lightning', 'keras')})}"
        )


if __name__ == "__main__":
    main()
