"""Linear models for tables: logistic regression for classes, ridge regression for a number.

What a data scientist runs first on a table, and what wins on some (a few hundred rows whose label is close to
a weighted sum of the columns: anes96's voters). The model is one `nn.Linear` over the encoded table, a
network without a hidden layer, so the Predictor, the HTTP service, ONNX export, int8, feedback and retraining
treat it as any network; only its training differs: `fit_linear` minimises the task's mean loss plus an L2
penalty on the whole training split at once with L-BFGS, to convergence (the problem is convex: no learning
rate, no epochs, no batches, the same weights every run).

The L2 strength defaults to scikit-learn's (C=1 for LogisticRegression, alpha=1 for Ridge: 1/N on the mean
loss of N rows). Choosing it instead among 13 strengths (10 to 1e-5) by the validation loss, as
LogisticRegressionCV does with folds, scored lower on the test split of every small table, mean of 5 seeds
(breast_cancer 0.9702 against 0.9737, wine 0.9833 against 0.9944, anes96 0.9101 against 0.9132, fair 0.7242
against 0.7267, diabetes R2 0.495 against 0.523): 20-600 validation rows choose a strength worse than the
fixed default. bench/RESULTS.md, tables.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console
from torch import nn

from modelfoundry.errors import UserError

MAX_ITERATIONS = 500  # most L-BFGS iterations; convergence usually takes tens
# below this many table cells L-BFGS runs on one CPU thread: its operations are too small to split, and a
# second thread's spin-waiting on a busy machine made a breast_cancer fit 10x slower
ONE_THREAD_ELEMENTS = 1_000_000


class LinearModel(nn.Module):
    """Flatten -> Linear: logits (B, C) for C classes, or (B, 1) for a number."""

    def __init__(self, features: int, outputs: int, l2: float | str):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(features, outputs)
        nn.init.zeros_(self.linear.weight)  # a convex problem: start at zero, the same fit every time
        nn.init.zeros_(self.linear.bias)
        self.l2 = l2
        self.resolved_options: dict = {}  # the L2 strength `l2: auto` came to, saved in the package

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(x))


def build_linear(
    input_shape: tuple[int, ...], num_classes: int, l2: float | Literal["auto"] = "auto"
) -> LinearModel:
    """An untrained linear model of the encoded table.

    Args:
        input_shape: (F,) encoded table features.
        num_classes: classes (2 or more: logistic regression, softmax over C outputs), or 1 for a number
            (ridge regression).
        l2: the L2 penalty on the weights (not the bias), added to the mean loss as l2/2 * sum(w^2); "auto":
            1/N for N training rows, scikit-learn's default (C=1, alpha=1).
    """
    if len(input_shape) != 1:
        raise UserError(
            f"model.name: 'linear' takes tables (F,); this data has shape {tuple(input_shape)}. "
            "Use cnn, resnet or mlp for images."
        )
    return LinearModel(input_shape[0], num_classes, l2)


def fit_linear(
    model: LinearModel,
    train,
    val,
    cfg,
    *,
    device: torch.device,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    log_dir: Path | None = None,
    augment=None,
    console: Console | None = None,
    teacher=None,
    on_epoch=None,
    objective=None,
):
    """Fit the weights with L-BFGS on the whole training split.

    Takes the arguments of `training.loop.fit` and returns its FitResult with one history record (epoch 1):
    l2, train_loss (without the penalty), the task's validation numbers (`objective`) and seconds. A fit
    takes seconds, so `resume` fits anew.
    """
    from modelfoundry.tasks.base import Objective
    from modelfoundry.training import distributed
    from modelfoundry.training.loop import FitResult

    if distributed.world_size() > 1:
        raise UserError("model.name: linear trains on one machine; run it without torchrun (--nproc).")
    if teacher is not None:
        raise UserError("train.distill: a linear model cannot learn from a teacher; use a student mlp.")
    console = console or Console(stderr=True)
    objective = objective or Objective()
    x, y = _arrays(train, device)
    weights = getattr(train, "weights", None)  # train.balance_groups (training/weights.py)
    l2 = 1.0 / len(x) if model.l2 == "auto" else float(model.l2)
    model.to(device)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    one = device.type == "cpu" and x.numel() < ONE_THREAD_ELEMENTS
    if one:
        torch.set_num_threads(1)
    try:
        record = {"epoch": 1, "l2": l2, "train_loss": _lbfgs(model.linear, x, y, weights, l2, objective)}
    finally:
        torch.set_num_threads(threads)
    if val is not None:
        vx, vy = _arrays(val, device)
        with torch.no_grad():
            record.update(objective.metrics(model(vx), vy))
    record["seconds"] = time.perf_counter() - started
    if on_epoch:
        on_epoch(record)
    model.resolved_options = {"l2": l2}
    console.print(
        f"linear: fitted by L-BFGS in {record['seconds']:.1f} s, L2 {l2:.3g}"
        + (f" (1/N for {len(x):,} training rows)" if model.l2 == "auto" else " (model.l2)"),
        highlight=False,
    )
    return FitResult([record], 1, False, "fp32", threads=1 if one else None)


def _lbfgs(linear: nn.Linear, x, y, weights, l2: float, objective) -> float:
    """Minimise the mean loss + l2/2 * |W|^2 over all of `x` (N, F) at once; the weights start where they are
    (the previous strength's optimum). Returns the final training loss without the penalty."""
    optimizer = torch.optim.LBFGS(
        linear.parameters(),
        lr=1.0,
        max_iter=MAX_ITERATIONS,
        tolerance_grad=1e-5,  # float32: tighter adds iterations (breast_cancer: 36, not 27), not loss
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective.loss(linear(x), y, weights) + 0.5 * l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(objective.loss(linear(x), y, weights))


def _arrays(data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's encoded inputs (N, F) and targets (N,) on `device`, from memory or streamed batches."""
    if hasattr(data, "inputs"):
        return data.inputs.to(device).flatten(1), data.targets.to(device)
    parts = list(data.batches(65536))
    return torch.cat([p[0] for p in parts]).to(device).flatten(1), torch.cat([p[1] for p in parts]).to(device)
