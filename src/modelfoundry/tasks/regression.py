"""Tabular regression: predict a number from table rows.

The inputs are tabular classification's (`tabular.TableInputs`); what differs is the target. It is
read as a number (a cell that is not one is named by row and column), standardised with the
training split's mean and standard deviation for training, and un-standardised in every output.
The split is stratified by quantile bins of the target. Loss: mse (default), mae or huber.
Metrics: rmse, mae, r2 and mape, beside the baseline of always predicting the training mean.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from modelfoundry.data import tabular
from modelfoundry.errors import UserError
from modelfoundry.tasks.base import Objective, Targets, Task, finite
from modelfoundry.tasks.tabular import TableInputs

STRATA = 10  # quantile bins of the target that the split stratifies on


STARTER = """\
# modelfoundry config: tabular regression (predict a number). Train with `foundry train config.yaml`.
task: tabular_regression
data:
  source: builtin:diabetes        # or a .csv / .parquet / .jsonl file
  label: target                   # the column of numbers to predict (needed for files)
  # drop: [id]                    # columns to ignore
  missing: impute                 # impute | drop | error
  split: {val: 0.15, test: 0.2, seed: 0}   # stratified by quantile bins of the target
model:
  name: mlp
  hidden: [64]
  dropout: 0.1
train:
  loss: mse                  # mse | mae | huber (huber and mae care less about outliers)
  epochs: 200
  batch_size: 32
  optimizer: adamw           # sgd | adagrad | adam | adamw
  lr: 0.003
  schedule: cosine           # constant | step | cosine | onecycle
  weight_decay: 0.01
  monitor: val_rmse          # val_rmse | val_mae | val_r2 | val_loss
  early_stopping_patience: 30  # stop after this many epochs without improvement
  precision: auto
  seed: 0
"""


class RegressionObjective(Objective):
    """Loss on the standardised target; validation numbers in the target's own units."""

    monitors: ClassVar[dict[str, str]] = {
        "val_rmse": "min",
        "val_loss": "min",
        "val_mae": "min",
        "val_r2": "max",
    }

    def __init__(self, loss: str, std: float):
        from torch import nn

        self._loss = {"mse": nn.MSELoss(), "mae": nn.L1Loss(), "huber": nn.HuberLoss()}[loss]
        self.std = std

    def loss(self, outputs, targets):
        return self._loss(outputs[:, 0].float(), targets)

    def distill(self, outputs, teacher_outputs, temperature: float):
        """A regression student matches the teacher's value (temperature does not apply)."""
        import torch

        return torch.nn.functional.mse_loss(outputs[:, 0].float(), teacher_outputs[:, 0].float())

    def metrics(self, outputs, targets) -> dict[str, float]:
        predicted = outputs[:, 0].float()
        error = (predicted - targets).double()
        spread = ((targets - targets.mean()) ** 2).double().sum()
        return {
            "val_loss": self._loss(predicted, targets).item(),
            "val_rmse": error.pow(2).mean().sqrt().item() * self.std,
            "val_mae": error.abs().mean().item() * self.std,
            "val_r2": (1 - error.pow(2).sum() / spread).item() if spread > 0 else 0.0,
        }

    def line(self, record: dict) -> str:
        return f"val_loss {record['val_loss']:.4f}  val_rmse {record['val_rmse']:.4g}"


class TabularRegression(TableInputs, Task):
    name = "tabular_regression"
    is_classifier = False
    objective_class = RegressionObjective
    default_monitor = "val_rmse"
    headline = ("rmse", "mae", "r2")
    retrain_metric, retrain_higher_is_better = "rmse", False
    starter = STARTER

    def check_config(self, cfg) -> list[str]:
        problems = []
        if not cfg.data.source.startswith("builtin:") and not cfg.data.label:
            problems.append(
                "data.label is required for tabular_regression: name the column of numbers to predict"
            )
        if cfg.train.label_smoothing:
            problems.append(
                "train.label_smoothing: only for classification; a regression target has no labels "
                "to smooth. Remove the key (train.loss: huber is the regression way to soften outliers)."
            )
        if cfg.train.distill and cfg.train.distill.temperature != 4.0:
            problems.append(
                "train.distill.temperature: a regression student matches the teacher's value; remove it."
            )
        return problems + self.check_monitor(cfg)

    def streamed(self, path: Path, config, base_dir: Path):
        raise UserError(
            f"data.streaming: {path} is streamed (data.streaming: {config.data.streaming}), but "
            "tabular_regression reads its table whole for now. Set data.streaming: false."
        )

    def objective(self, train_cfg, target_spec: dict | None = None) -> Objective:
        return RegressionObjective(train_cfg.loss or "mse", (target_spec or {}).get("std", 1.0))

    # ---- data --------------------------------------------------------------------------------

    def raw_targets(self, column: pd.Series, origin: str) -> np.ndarray:
        numbers = pd.to_numeric(column, errors="coerce")
        bad = numbers.isna() & column.notna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise UserError(
                f"{origin}: {tabular.row_name(origin, column.index[i])}, column '{column.name}': "
                f"{column.iloc[i]!r} is not a number, and tabular_regression predicts a number. "
                "Fix the cell, or use task: tabular_classification if the column holds categories."
            )
        infinite = ~np.isfinite(numbers.to_numpy(dtype=float))
        if infinite.any():
            i = int(np.argmax(infinite))
            raise UserError(
                f"{origin}: {tabular.row_name(origin, column.index[i])}, column '{column.name}': "
                f"{tabular.plain(column.iloc[i])} is not a finite number. Fix the cell or remove the row."
            )
        return numbers.to_numpy(dtype=np.float64)

    def builtin_targets(self, bunch) -> np.ndarray:
        if getattr(bunch, "target_names", None) is not None:
            raise UserError("data.source: this built-in set has classes; use task: tabular_classification.")
        return np.asarray(bunch.target, dtype=np.float64)

    def make_targets(self, raw: np.ndarray, part_of: np.ndarray, report: dict, origin: str, data) -> Targets:
        raw = np.asarray(raw, dtype=np.float64)
        if np.ptp(raw[part_of == "train"]) == 0:
            raise UserError(
                f"{origin}: the target '{data.label or 'target'}' is {raw[0]:g} in every row; "
                "there is nothing to predict. Check that data.label names the right column."
            )
        report["target"] = describe(raw)
        # quantile bins, so every split spans the range of the target (stratify takes labels)
        edges = np.unique(np.quantile(raw, np.linspace(0, 1, STRATA + 1)[1:-1]))
        return Targets(raw, [], np.digitize(raw, edges).astype(str), {"column": data.label or "target"})

    def fit_targets(self, targets: Targets, train_index: np.ndarray) -> None:
        train = targets.values[train_index]
        mean, std = float(train.mean()), float(train.std()) or 1.0
        targets.spec.update(mean=mean, std=std)
        targets.values = ((targets.values - mean) / std).astype(np.float32)

    def output_size(self, labels: list[str]) -> int:
        return 1

    def describe_targets(self, labels: list[str]) -> str:
        return "a number to predict"

    # ---- predictions, metrics, report --------------------------------------------------------

    def predictions(self, outputs, spec: dict) -> np.ndarray:
        """Model outputs (N, 1) -> values (N,) in the target's units."""
        target = spec["target"]
        return outputs[:, 0].float().cpu().numpy().astype(np.float64) * target["std"] + target["mean"]

    def true_values(self, targets: np.ndarray, spec: dict) -> np.ndarray:
        target = spec["target"]
        return np.asarray(targets, dtype=np.float64) * target["std"] + target["mean"]

    def metrics(self, predictions: np.ndarray, targets: np.ndarray, spec: dict, labels=None) -> dict:
        from modelfoundry.evaluate.metrics import regression_metrics

        return regression_metrics(predictions, self.true_values(targets, spec), spec["target"]["mean"])

    def mistakes(self, predictions, targets, spec: dict, display, k: int = 24) -> list[dict]:
        from modelfoundry.tasks.base import _take

        if predictions is None:
            return []
        truth = self.true_values(targets, spec)
        worst = np.argsort(-np.abs(predictions - truth))[:k].tolist()
        return [
            {
                "true": f"{truth[i]:.4g}",
                "pred": f"{predictions[i]:.4g}",
                "error": float(predictions[i] - truth[i]),
                **self.shown(shown),
            }
            for i, shown in zip(worst, _take(display, worst))
        ]

    def report_sections(self, predictions, targets, spec: dict) -> list[tuple[str, str, str]]:
        from modelfoundry.evaluate.report import regression_plots

        if predictions is None or not len(predictions):
            return []
        return [
            ("residuals", "Predicted vs true", regression_plots(predictions, self.true_values(targets, spec)))
        ]

    # ---- Predictor and service -------------------------------------------------------------------

    def answer(self, predictions: np.ndarray, spec: dict, top_k: int = 1) -> list[dict]:
        return [{"prediction": float(value)} for value in predictions]

    def printed(self, answer: dict, top_k: int) -> dict:
        return {"prediction": round(answer["prediction"], 6)}

    def predicted(self, answer: dict):
        return f"{answer['prediction']:.6g}"

    def correction(self, value, spec: dict) -> str:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if not finite(value):
            raise ValueError(
                f"{value!r} is not a finite number; this model predicts a number, so send the right one."
            )
        return repr(float(value))

    def card(self, spec: dict) -> dict:
        return {**super().card(spec), "target": spec["target"]}

    # ---- evaluation of new data, retraining ------------------------------------------------------

    def encode_targets(self, raw, spec: dict, origin: str) -> np.ndarray:
        target = spec["target"]
        return (np.asarray(raw, dtype=np.float64) - target["mean"]) / target["std"]

    variant_columns = (
        ("rmse", "RMSE", ".4g"),
        ("r2", "R2", ".4f"),
        ("mean_abs_change", "mean change from original", ".4g"),
    )

    def variant_scores(self, predictions: np.ndarray, targets: np.ndarray, spec: dict, reference) -> dict:
        metrics = self.metrics(predictions, targets, spec)
        change = float(np.abs(predictions - reference).mean()) if reference is not None else 0.0
        return {"rmse": metrics["rmse"], "r2": metrics["r2"], "mean_abs_change": change}

    def parity_view(self, outputs):
        """The standardised value: an absolute tolerance means the same for every target's units."""
        return outputs[:, :1].float()

    def agreement(self, reference, candidate) -> float:
        """Share of examples whose two values are within 5% of the target's standard deviation."""
        return float(((reference - candidate).abs() < 0.05).double().mean())

    def heldout_targets(self, data) -> list:
        return self.true_values(data.test.targets.numpy(), {"target": data.target}).tolist()

    def example_scores(self, predictor, inputs: list, targets: list) -> np.ndarray:
        """Per-example squared error in the target's units; `aggregate_score` makes it the RMSE."""
        return (np.array(predictor.predict(inputs)) - np.asarray(targets, dtype=np.float64)) ** 2

    def aggregate_score(self, scores: np.ndarray) -> float:
        return float(math.sqrt(scores.mean()))

    def stored(self, label: str):
        return float(label)


def describe(values: np.ndarray) -> dict:
    quantiles = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        **dict(zip(("min", "q25", "median", "q75", "max"), map(float, quantiles))),
    }
