"""Gradient-boosted decision trees (LightGBM) for tables: what the field reaches for first on tabular data.

The model is a `torch.nn.Module` around a LightGBM booster, so the runner, the Predictor, the HTTP
service, `foundry tune` and retraining treat it as any other family: it takes the encoded table
(N, F) and returns raw scores shaped like a network's logits, (N, C) for C classes (a binary booster's
one score s becomes [0, s], so the softmax is its sigmoid) and (N, 1) for a number.

It is trained by `fit_gbdt`, not the gradient loop: boosting rounds with early stopping on the
validation split's loss. The booster is kept in LightGBM's text model format, as the uint8 buffer
`booster` (saved in model.safetensors like any weights) and as `lightgbm.txt` beside it for LightGBM
itself; a package is never pickled. LightGBM is imported only to build or train, so `foundry --help`
stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from rich.console import Console
from torch import nn

from modelfoundry.errors import UserError

CURVE_POINTS = 100  # most history records (learning-curve points, tune's pruning steps) per training
THREADED_ROWS = 50_000  # LightGBM trains on one thread below this many rows (see _params)
AUTO = "auto"  # an option the gbdt recipe leaves to the training rows (`size_aware`)


# The gbdt recipe's size-aware options, chosen on validation loss over 5 seeds on statsmodels' fair (4,455
# training rows) and randhie (14,133) and on subsamples of their training rows (500 to 3,000): a grid of
# num_leaves 7-127 x min_child_samples 5-40 x colsample_bytree 0.8/1 (bench/RESULTS.md, "The gbdt recipe by
# size"). Up to fair's 4,455 rows trees of 7 leaves had the lowest validation loss; randhie's 14,133 rows
# wanted 63 (or 127); in between the leaves double as the rows grow ~1.6x. Leaves of 5 rows helped from
# 1,500 rows on; below that LightGBM's 20 stayed best (and keeps a tiny table's trees from memorising it).
LEAVES_BY_ROWS = ((5_000, 7), (8_000, 15), (12_500, 31))  # (fewer training rows than, num_leaves); 63 above
MOST_LEAVES = 63
SMALL_LEAF_FROM = 1_500  # min_child_samples 5 from this many training rows, else 20


def size_aware(rows: int) -> dict[str, int]:
    """The values the gbdt recipe's "auto" options take for `rows` training rows: trees with more leaves,
    and smaller leaves, as the rows grow."""
    leaves = next((leaves for below, leaves in LEAVES_BY_ROWS if rows < below), MOST_LEAVES)
    return {"num_leaves": leaves, "min_child_samples": 5 if rows >= SMALL_LEAF_FROM else 20}


def build_gbdt(
    input_shape: tuple[int, ...],
    num_classes: int,
    n_estimators: int = 100,
    learning_rate: float = 0.1,
    num_leaves: int | Literal["auto"] = 31,
    max_depth: int = -1,
    min_child_samples: int | Literal["auto"] = 20,
    subsample: float = 1.0,
    colsample_bytree: float = 1.0,
    reg_lambda: float = 0.0,
    reg_alpha: float = 0.0,
    max_bin: int = 255,
    categorical: Literal["onehot", "native"] = "onehot",
    category_blocks: list | None = None,
) -> GradientBoostedTrees:
    """An untrained booster; the defaults are LightGBM's own (the gbdt recipe in models/registry.py
    changes some).

    Args:
        input_shape: (F,) encoded table features.
        num_classes: classes (2 or more), or 1 for a number.
        n_estimators: most boosting rounds (trees per class); early stopping usually ends sooner.
        learning_rate: shrinkage of each tree's contribution.
        num_leaves: most leaves per tree; "auto" (the recipe): from the training rows (`size_aware`).
        max_depth: most levels per tree; -1 for no limit.
        min_child_samples: fewest training rows in a leaf; "auto" (the recipe): from the training rows.
        subsample: fraction of rows each tree sees (bagging); 1.0 for all.
        colsample_bytree: fraction of features each tree sees.
        reg_lambda, reg_alpha: L2 and L1 penalties on leaf values.
        max_bin: most histogram bins per feature.
        categorical: "onehot": the trees read the one-hot features the MLP reads; "native": each category
            column reaches LightGBM as one feature of category codes, split by LightGBM's own categorical rule
            (groups of categories per split). One-hot is the default: on UCI Adult over 3 seeds, 0.8729 test
            accuracy against native's 0.8720 (bench/RESULTS.md, tables).
        category_blocks: from the data, not `model:`: [start, width] of each category column's one-hot block
            in the encoded features (tasks/tabular.py).
    """
    if len(input_shape) != 1:
        raise UserError(
            f"model.name: 'gbdt' takes tables (F,); this data has shape {tuple(input_shape)}. "
            "Use cnn, resnet or mlp for images."
        )
    options = {
        "n_estimators": n_estimators,
        "learning_rate": learning_rate,
        "num_leaves": num_leaves,
        "max_depth": max_depth,
        "min_child_samples": min_child_samples,
        "subsample": subsample,
        "colsample_bytree": colsample_bytree,
        "reg_lambda": reg_lambda,
        "reg_alpha": reg_alpha,
        "max_bin": max_bin,
        "categorical": categorical,
    }
    blocks = (category_blocks or []) if categorical == "native" else []
    return GradientBoostedTrees(input_shape[0], num_classes, options, blocks)


class GradientBoostedTrees(nn.Module):
    """A LightGBM booster behind the interface of a network: features (N, F) in, scores (N, C) out."""

    onnx_refusal = (
        "a gbdt model has no ONNX export (nor int8 variant) here: torch.onnx cannot trace a LightGBM booster "
        "and no LightGBM-to-ONNX converter (onnxmltools) is installed. Serve and predict it as it is (the "
        "default backend): the booster already predicts on the CPU without PyTorch's weights."
    )

    def __init__(self, features: int, outputs: int, options: dict, category_blocks: list | None = None):
        super().__init__()
        self.features, self.outputs, self.options = features, outputs, options
        # [start, width] of each category's one-hot block, folded into one feature of codes for LightGBM
        self.category_blocks = [tuple(b) for b in category_blocks or []]
        # LightGBM's text model format as bytes: saved and loaded with the other weights (safetensors)
        self.register_buffer("booster", torch.zeros(0, dtype=torch.uint8))
        # holds no weights; tells callers that ask a model's parameters which device it is on
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self._booster = None
        self.resolved_options: dict = {}  # what "auto" options came to, saved in the package
        self.choices: list[str] = []  # the same, in words (a `chosen:` line of the run)

    def read_data(self, data) -> None:
        """Settle the options left "auto" (the gbdt recipe) from the training split's rows."""
        self.settle(len(data.train))

    def settle(self, rows: int) -> None:
        """Give each "auto" option its `size_aware` value for `rows` training rows; say what was chosen."""
        auto = [key for key, value in self.options.items() if value == AUTO]
        if not auto:
            return
        values = size_aware(rows)
        self.resolved_options = {key: values[key] for key in auto}
        self.options.update(self.resolved_options)
        shown = ", ".join(f"{key} {value}" for key, value in self.resolved_options.items())
        self.choices = [f'gbdt {shown}: for {rows:,} training rows (the gbdt recipe\'s "auto")']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._booster is None:
            raise RuntimeError("the booster is not trained or loaded yet")
        scores = self.scores(x.detach().float().cpu().numpy())
        return torch.from_numpy(scores).to(x.device)

    def scores(self, x: np.ndarray, iteration: int | None = None) -> np.ndarray:
        """Raw scores (N, C) of features (N, F), with the first `iteration` rounds (None: the best)."""
        raw = np.asarray(
            self._booster.predict(self.booster_inputs(x), raw_score=True, num_iteration=iteration), np.float32
        )
        if self.outputs == 2:  # binary: one logit s; softmax([0, s]) = [1 - sigmoid(s), sigmoid(s)]
            return np.stack([np.zeros_like(raw), raw], 1)
        return raw.reshape(len(x), self.outputs)

    def booster_inputs(self, x: np.ndarray) -> np.ndarray:
        """The encoded features (N, F) as LightGBM reads them: the numbers and date parts as they are, then
        each category's one-hot block as one code (its category's index; NaN, LightGBM's missing, for a
        category unseen in training). With `categorical: onehot`, `x` itself."""
        if not self.category_blocks:
            return x
        keep = np.ones(x.shape[1], dtype=bool)
        codes = []
        for start, width in self.category_blocks:
            block = x[:, start : start + width]
            keep[start : start + width] = False
            code = block.argmax(1).astype(np.float32)
            code[block.max(1) < 0.5] = np.nan
            codes.append(code)
        return np.concatenate([x[:, keep], np.stack(codes, 1)], 1)

    @property
    def categorical_features(self) -> list[int]:
        """The indices of the category codes among `booster_inputs`' columns."""
        numbers = self.features - sum(width for _, width in self.category_blocks)
        return list(range(numbers, numbers + len(self.category_blocks)))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """SHAP values of features (N, F) by LightGBM (`pred_contrib`, exact for trees): (N, K, F + 1), K the
        booster's score columns (1 for two classes or a number), the last of each its expected score. A
        row's values add up to its raw score. With native categories a category's value is given to the first
        feature of its one-hot block (the block's features sum to the column's value either way)."""
        folded = self.booster_inputs(x)
        raw = np.asarray(self._booster.predict(folded, pred_contrib=True), np.float64)
        raw = raw.reshape(len(x), -1, folded.shape[1] + 1)
        if not self.category_blocks:
            return raw
        keep = np.ones(self.features, dtype=bool)
        for start, width in self.category_blocks:
            keep[start : start + width] = False
        out = np.zeros((len(x), raw.shape[1], self.features + 1))
        numbers = int(keep.sum())
        out[:, :, np.flatnonzero(keep)] = raw[:, :, :numbers]
        for j, (start, _) in enumerate(self.category_blocks):
            out[:, :, start] = raw[:, :, numbers + j]
        out[:, :, -1] = raw[:, :, -1]
        return out

    def set_booster(self, booster) -> None:
        self._booster = booster
        text = booster.model_to_string()  # the trees up to the best round (early stopping), or all
        self.booster = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        import lightgbm

        text = bytes(state_dict["booster"].cpu().numpy()).decode()
        booster = lightgbm.Booster(model_str=text)
        if (
            booster.num_feature() == self.features
        ):  # trees of one-hot features (packages before `categorical`)
            self.category_blocks = []
        self.set_booster(booster)
        return nn.modules.module._IncompatibleKeys([], [])

    def package_files(self) -> dict[str, str]:
        """The booster as LightGBM's own text file, which `lightgbm.Booster(model_file=...)` reads."""
        return {"lightgbm.txt": bytes(self.booster.numpy()).decode()}

    def describe(self) -> str:
        leaves = f"of up to {self.options['num_leaves']} leaves"
        if self._booster is None:
            return f"up to {self.options['n_estimators']:,} boosting rounds of trees {leaves}"
        return f"{self._booster.num_trees():,} trees {leaves}"


def _params(model: GradientBoostedTrees, cfg, rows: int) -> dict:
    """LightGBM's parameters for the model's options, the run's objective and `rows` training rows."""
    o = model.options
    if model.outputs == 1:  # a number, standardised: the run's loss
        objective = {"mse": "regression", "mae": "regression_l1", "huber": "huber"}[cfg.loss or "mse"]
        extra = {"objective": objective, "metric": "l2"}
    elif model.outputs == 2:
        extra = {"objective": "binary", "metric": "binary_logloss"}
    else:
        extra = {"objective": "multiclass", "num_class": model.outputs, "metric": "multi_logloss"}
    return {
        **extra,
        "learning_rate": o["learning_rate"],
        "num_leaves": o["num_leaves"],
        "max_depth": o["max_depth"],
        "min_child_samples": o["min_child_samples"],
        "bagging_fraction": o["subsample"],
        "bagging_freq": 1 if o["subsample"] < 1 else 0,
        "feature_fraction": o["colsample_bytree"],
        "lambda_l2": o["reg_lambda"],
        "lambda_l1": o["reg_alpha"],
        "max_bin": o["max_bin"],
        "seed": cfg.seed,
        # one thread below THREADED_ROWS: on a few thousand rows a second thread saves little, and where the
        # cores are busy LightGBM's OpenMP threads spin-wait (a 320-row fit measured 0.1 s on one thread
        # and 157 s on two on a shared 2-core machine); 0 is LightGBM's default, every core
        "num_threads": 1 if rows < THREADED_ROWS else 0,
        "deterministic": True,
        "verbosity": -1,
    }


def _arrays(data) -> tuple[np.ndarray, np.ndarray]:
    """A split's encoded inputs (N, F) and targets (N,) as numpy, from memory or streamed batches."""
    if hasattr(data, "inputs"):
        return data.inputs.cpu().numpy(), data.targets.cpu().numpy()
    parts = list(data.batches(65536))
    return (
        torch.cat([p[0] for p in parts]).cpu().numpy(),
        torch.cat([p[1] for p in parts]).cpu().numpy(),
    )


def fit_gbdt(
    model: GradientBoostedTrees,
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
    """Boost trees on `train`, stopping when the validation loss has not improved for
    `cfg.early_stopping_patience` rounds; the model keeps the best round's trees.

    Takes the arguments of `training.loop.fit` and returns its FitResult, with a history record every
    `n_estimators / CURVE_POINTS` rounds and at the best round ("epoch" = boosting rounds so far):
    train_loss, the task's validation numbers (`objective`) and seconds. A run is seconds long, so
    `resume` trains anew.
    """
    import lightgbm

    from modelfoundry.training import distributed
    from modelfoundry.training.loop import FitResult

    if distributed.world_size() > 1:
        raise UserError("model.name: gbdt trains on one machine; run it without torchrun (--nproc).")
    if teacher is not None:
        raise UserError("train.distill: a gbdt model cannot learn from a teacher; use a student mlp.")
    if val is None and cfg.early_stopping_patience:
        raise UserError("train.early_stopping_patience needs a validation split: set data.split.val above 0.")
    console = console or Console(stderr=True)
    x, y = _arrays(train)
    model.settle(len(x))  # "auto" options a caller did not settle from the data (builder.build does)
    started = time.perf_counter()
    weights = getattr(train, "weights", None)  # train.balance_groups (training/weights.py)
    dtrain = lightgbm.Dataset(
        model.booster_inputs(x),
        y,
        weight=None if weights is None else weights.cpu().numpy(),
        categorical_feature=model.categorical_features or "auto",
    )
    sets, callbacks = [], []
    if val is not None:
        vx, vy = _arrays(val)
        sets.append(lightgbm.Dataset(model.booster_inputs(vx), vy, reference=dtrain))
        if cfg.early_stopping_patience:
            callbacks.append(lightgbm.early_stopping(cfg.early_stopping_patience, verbose=False))
    curve = _Curve(max(1, round(model.options["n_estimators"] / CURVE_POINTS)), val is not None)
    booster = lightgbm.train(
        _params(model, cfg, len(y)),
        dtrain,
        num_boost_round=model.options["n_estimators"],
        valid_sets=sets,
        valid_names=["val"][: len(sets)],
        callbacks=[*callbacks, curve],
    )
    seconds = time.perf_counter() - started
    rounds = booster.current_iteration()
    best = booster.best_iteration or rounds
    model.set_booster(booster)
    model.load_state_dict(model.state_dict())  # the booster as packaged: the best round's trees
    history = curve.history(
        model, best, (vx, vy) if val is not None else None, objective, model.options["learning_rate"]
    )
    for record in history:
        if on_epoch:
            on_epoch(record)
    stopped = rounds < model.options["n_estimators"]
    console.print(
        f"boosted {rounds} rounds in {seconds:.1f} s; kept the best {best}"
        + (" (the validation loss stopped improving)" if stopped else ""),
        highlight=False,
    )
    return FitResult(history, best, stopped, "fp32")


class _Curve:
    """A LightGBM callback that keeps a learning-curve point every `step` rounds: the training loss and the
    validation split's predictions, which the booster already holds (a copy, not a prediction: the curve
    costs LightGBM's training little)."""

    def __init__(self, step: int, has_val: bool):
        self.step, self.has_val, self.points = step, has_val, []
        self.started = time.perf_counter()

    def __call__(self, env) -> None:
        done = env.iteration + 1
        if done % self.step and done != env.end_iteration:
            return
        train_loss = env.model.eval_train()[0][2]
        # probabilities (N, C) or (N,), or values; LightGBM's own buffer, so copied
        val = env.model._Booster__inner_predict(data_idx=1).copy() if self.has_val else None
        self.points.append((done, train_loss, val, time.perf_counter() - self.started))

    def history(self, model, best: int, val, objective, lr: float) -> list[dict]:
        """The records of `fit`'s history: one per point, and the best round's (predicted once)."""
        records, previous = [], 0.0
        for done, train_loss, predicted, seconds in self.points:
            record = {"epoch": done, "train_loss": float(train_loss), "lr": lr}
            if predicted is not None and objective is not None:
                record.update(
                    objective.metrics(_as_scores(predicted, model.outputs), torch.as_tensor(val[1]))
                )
            record["seconds"], previous = seconds - previous, seconds
            records.append(record)
        if val is not None and objective is not None and best not in {r["epoch"] for r in records}:
            scores = torch.from_numpy(model.scores(val[0]))
            records.append({"epoch": best, "lr": lr, **objective.metrics(scores, torch.as_tensor(val[1]))})
            records.sort(key=lambda r: r["epoch"])
        return records


def _as_scores(predicted: np.ndarray, outputs: int) -> torch.Tensor:
    """LightGBM's converted predictions as the scores `forward` gives: log-probabilities for classes
    (their softmax is the probabilities), values for a number."""
    if outputs == 1:
        return torch.from_numpy(predicted.reshape(-1, 1).astype(np.float32))
    p = predicted if outputs > 2 else np.stack([1 - predicted, predicted], 1)
    return torch.from_numpy(np.log(np.clip(p, 1e-12, 1)).astype(np.float32))
