"""Tabular regression: predict a number from table rows.

The inputs are tabular classification's (`tabular.TableInputs`); what differs is the target. It is
read as a number (a cell that is not one is named by row and column), standardised with the
training split's mean and standard deviation for training, and un-standardised in every output.
The split is stratified by quantile bins of the target. A streamed table (data.streaming) is read the
same way chunk by chunk: each chunk's targets are added to `Moments` per split, whose training part
standardises them; its split is by a hash of the row number, stratified only in expectation.
Loss: mse (default), mae or huber.
Metrics: rmse, mae, r2 and mape, beside the baseline of always predicting the training mean.
"""

from __future__ import annotations

import contextlib
import math
from typing import ClassVar

import numpy as np
import pandas as pd

from modelfoundry.data import tabular
from modelfoundry.errors import InputError, UserError
from modelfoundry.tasks.base import Objective, Targets, Task, finite, weighted_mean
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
model:                            # leave model: out and foundry picks gbdt, mlp or linear (auto)
  name: mlp                       # or gbdt (gradient-boosted trees: n_estimators, num_leaves, ...)
  hidden: [64]
  dropout: 0.1
train:
  loss: mse                  # mse | mae | huber (huber and mae care less about outliers)
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

    def loss(self, outputs, targets, weights=None):
        if weights is None:
            return self._loss(outputs[:, 0].float(), targets)
        return weighted_mean(self._loss, outputs[:, 0].float(), targets, weights)

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
    review_gap = ("r2", 0.1)  # R2 is on one scale for every target; RMSE is in the target's units
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

    def objective(self, train_cfg, target_spec: dict | None = None) -> Objective:
        return RegressionObjective(train_cfg.loss or "mse", (target_spec or {}).get("std", 1.0))

    # ---- data --------------------------------------------------------------------------------

    def raw_targets(self, column: pd.Series, origin: str) -> np.ndarray:
        numbers, i = tabular.as_numbers(column)
        if i is not None:
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

    def count_targets(self, raw: np.ndarray, part_of: np.ndarray, counts: dict | None = None) -> dict:
        """A number: per part its count, mean, spread, least and greatest (`Moments`), merged per chunk."""
        counts = {} if counts is None else counts
        for part in dict.fromkeys(part_of.tolist()):
            counts.setdefault(part, Moments()).add(np.asarray(raw, dtype=np.float64)[part_of == part])
        return counts

    def check_targets(self, counts: dict, origin: str, data, report: dict, values=None) -> tuple[list, dict]:
        """The target must vary among the training rows. Returns no labels and what the package keeps: the
        column and the training rows' mean and standard deviation, which standardise the target. `values`:
        the raw targets the reader holds, for the report's quantiles (a sample of them when streamed)."""
        column = data.label or "target"
        train = counts["train"]
        if train.low == train.high:
            raise UserError(
                f"{origin}: the target '{column}' is {train.low:g} in every row; "
                "there is nothing to predict. Check that data.label names the right column."
            )
        everything = Moments()
        for part in counts.values():
            everything.merge(part)
        report["target"] = describe(everything, values)
        return [], {"column": column, **train.standardisation()}

    def strata(self, raw: np.ndarray) -> np.ndarray:
        """Quantile bins of the target, so every split spans its range (the split stratifies on labels).
        A streamed split has none: it is by a hash of the row number, so stratified only in expectation."""
        edges = np.unique(np.quantile(raw, np.linspace(0, 1, STRATA + 1)[1:-1]))
        return np.digitize(raw, edges).astype(str)

    def fit_targets(self, targets: Targets, train_index: np.ndarray) -> None:
        """Standardised with the training split's mean and standard deviation."""
        train = Moments().add(np.asarray(targets.values[train_index], dtype=np.float64))
        targets.spec.update(train.standardisation())
        targets.values = self.encode_targets(targets.values, {"target": targets.spec}, "data").astype(
            np.float32
        )

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

    def fairness(self, predictions, targets, groups, spec: dict, settings: dict) -> dict:
        """Per group: RMSE, MAE and the mean residual (predicted - true), in the target's units."""
        from modelfoundry.evaluate import fairness

        per_group = fairness.regression_groups(predictions, self.true_values(targets, spec))
        return fairness.audit(per_group, groups, settings)

    def score(self, predictions: np.ndarray, targets: np.ndarray, spec: dict) -> float:
        return float(np.sqrt(np.mean((predictions - self.true_values(targets, spec)) ** 2)))  # rmse

    def balance_cells(self, targets: np.ndarray, labels: list[str]) -> np.ndarray:
        return np.full(
            len(targets), "all", dtype=object
        )  # a number has no classes: each group counts equally

    def report_sections(self, predictions, targets, spec: dict) -> list[tuple[str, str, str]]:
        from modelfoundry.evaluate.report import regression_plots

        if predictions is None or not len(predictions):
            return []
        return [
            ("residuals", "Predicted vs true", regression_plots(predictions, self.true_values(targets, spec)))
        ]

    # ---- explanations ----------------------------------------------------------------------------

    def explain_target(self, prediction, spec: dict, label: str | None) -> tuple[None, dict]:
        """A number: the predicted value is explained; there is no class to ask for."""
        if label is not None:
            raise InputError(
                422,
                "class",
                f"class {label!r}: a tabular_regression model predicts a number, so its explanation is of "
                "the value; leave out the class.",
            )
        return None, {"prediction": float(prediction), "explains": f"predicted {spec['target']['column']}"}

    def explained(self, outputs, spec: dict, target):
        """The value in the target's units (S,)."""
        return outputs[:, 0].float() * spec["target"]["std"] + spec["target"]["mean"]

    def tree_contributions(
        self, contributions: np.ndarray, target, spec: dict
    ) -> tuple[np.ndarray, float, str]:
        """The booster predicts the standardised value: its SHAP values times the spread, plus the mean."""
        t = spec["target"]
        row = contributions[0]
        return row[:-1] * t["std"], float(row[-1]) * t["std"] + t["mean"], f"predicted {t['column']}"

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


class Moments:
    """Count, mean, sum of squared deviations, least and greatest of some numbers, merged chunk by chunk
    (Chan, Golub and LeVeque's pairwise update): all a streamed reader keeps of a target."""

    def __init__(self, n: int = 0, mean: float = 0.0, m2: float = 0.0, low=math.inf, high=-math.inf):
        self.n, self.mean, self.m2, self.low, self.high = n, mean, m2, low, high

    def add(self, values: np.ndarray) -> Moments:
        """Adds some numbers (N,) float64; the first ones give numpy's mean and std exactly."""
        if len(values):
            mean = float(values.mean())
            m2 = float(((values - mean) ** 2).sum())
            self.merge(Moments(len(values), mean, m2, float(values.min()), float(values.max())))
        return self

    def merge(self, other: Moments) -> Moments:
        if not self.n:
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
        elif other.n:
            total, delta = self.n + other.n, other.mean - self.mean
            self.mean += delta * other.n / total
            self.m2 += other.m2 + delta * delta * self.n * other.n / total
            self.n = total
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        return self

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 0.0

    def standardisation(self) -> dict:
        """{"mean", "std"} that standardise the target (a std of 1 where the numbers do not vary)."""
        return {"mean": self.mean, "std": self.std or 1.0}


def describe(moments: Moments, values: np.ndarray) -> dict:
    """The target for the report: mean, spread and range of every example (`moments`), and quantiles of
    `values` (all of them in memory; when streamed, the uniform sample of training rows the encoder saw)."""
    values = np.asarray(values, dtype=np.float64)
    quantiles = dict(zip(("q25", "median", "q75"), map(float, np.quantile(values, [0.25, 0.5, 0.75]))))
    out = {"mean": moments.mean, "std": moments.std, "min": moments.low, **quantiles, "max": moments.high}
    if len(values) < moments.n:
        out["quantiles_of_rows"] = len(values)
    return out
