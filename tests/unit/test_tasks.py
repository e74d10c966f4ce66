"""The task registry and tabular regression: one module per task, asked instead of branched on."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from modelfoundry.config import load_config
from modelfoundry.data.prepare import prepare
from modelfoundry.errors import UserError
from modelfoundry.evaluate.metrics import regression_metrics
from modelfoundry.tasks import TASKS, get_task
from modelfoundry.tasks.regression import RegressionObjective

SRC = Path(__file__).resolve().parents[2] / "src" / "modelfoundry"
REGRESSION = {"task": "tabular_regression", "data": {"source": "prices.csv", "label": "price"}}


def config_error(raw: dict) -> str:
    with pytest.raises(UserError) as info:
        load_config(copy.deepcopy(raw))
    return str(info.value)


def test_every_registered_task_loads_and_names_itself():
    for name in TASKS:
        task = get_task(name)
        assert task.name == name and task.kind in ("image", "text", "table", "interactions")


def test_an_unknown_task_suggests_the_closest():
    message = config_error({**REGRESSION, "task": "tabular_regresion"})
    assert "tabular_regression" in message


def test_no_code_outside_the_task_modules_branches_on_a_task_name_or_input_kind():
    branch = re.compile(r"""task\s*[!=]=\s*["']|\[["']kind["']\]\s*[!=]=\s*["'](image|text|table)""")
    offenders = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in SRC.rglob("*.py")
        if "tasks" not in path.relative_to(SRC).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert offenders == []


def test_regression_defaults_to_rmse_and_refuses_classification_keys_with_the_regression_way():
    cfg, _ = load_config(REGRESSION)
    assert cfg.train.monitor == "val_rmse"
    message = config_error(
        {
            **REGRESSION,
            "train": {"label_smoothing": 0.1, "monitor": "val_accuracy"},
            "tune": {"metric": "val_f1_macro"},
        }
    )
    assert "3 problem(s)" in message
    assert "train.label_smoothing: only for classification" in message and "huber" in message
    assert "train.monitor: 'val_accuracy' is not a validation metric of tabular_regression" in message
    assert "val_rmse" in message and "tune.metric: 'val_f1_macro'" in message


def test_a_regression_loss_on_a_classifier_is_refused():
    message = config_error(
        {"task": "tabular_classification", "data": {"source": "builtin:wine"}, "train": {"loss": "huber"}}
    )
    assert "train.loss: 'huber' is for tabular_regression" in message


def test_a_regression_config_needs_the_target_column():
    assert "data.label is required for tabular_regression" in config_error(
        {"task": "tabular_regression", "data": {"source": "prices.csv"}}
    )


def write_prices(folder: Path, rows: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    size = rng.uniform(20, 200, rows)
    rooms = rng.integers(1, 6, rows)
    frame = pd.DataFrame({"size": size, "rooms": rooms, "city": rng.choice(["north", "south"], rows)})
    frame["price"] = (
        1000 + 30 * size + 50 * rooms + (frame["city"] == "north") * 200 + rng.normal(0, 20, rows)
    )
    path = folder / "prices.csv"
    frame.to_csv(path, index=False)
    return path


def test_regression_targets_are_standardised_on_the_training_split_and_split_by_quantiles(tmp_path):
    path = write_prices(tmp_path)
    cfg, _ = load_config({**REGRESSION, "data": {"source": str(path), "label": "price"}})
    data = prepare(cfg, tmp_path)
    assert data.labels == [] and data.train.targets.dtype == torch.float32
    mean = data.target["mean"]
    assert (
        abs(float(data.train.targets.mean())) < 1e-5
        and abs(float(data.train.targets.std(unbiased=False)) - 1) < 1e-4
    )
    prices = pd.read_csv(path)["price"]
    assert prices.min() < mean < prices.max() and data.target["column"] == "price"
    # every split spans the range: its smallest and largest standardised targets are far apart
    for part in (data.val, data.test):
        assert float(part.targets.min()) < -1 and float(part.targets.max()) > 1


def test_a_target_that_is_not_a_number_is_named_by_row_and_column(tmp_path):
    path = write_prices(tmp_path, rows=30)
    frame = pd.read_csv(path)
    frame["price"] = frame["price"].astype(object)
    frame.loc[6, "price"] = "call us"
    frame.to_csv(path, index=False)
    cfg, _ = load_config({**REGRESSION, "data": {"source": str(path), "label": "price"}})
    with pytest.raises(
        UserError, match=r"row 7 \(line 8 of prices.csv\), column 'price': 'call us' is not a number"
    ):
        prepare(cfg, tmp_path)


def test_a_constant_target_is_an_error(tmp_path):
    path = write_prices(tmp_path, rows=30)
    frame = pd.read_csv(path)
    frame["price"] = 5.0
    frame.to_csv(path, index=False)
    cfg, _ = load_config({**REGRESSION, "data": {"source": str(path), "label": "price"}})
    with pytest.raises(UserError, match="the target 'price' is 5 in every row; there is nothing to predict"):
        prepare(cfg, tmp_path)


def test_a_classification_builtin_on_regression_and_the_reverse_name_the_other_task():
    cfg, _ = load_config({"task": "tabular_regression", "data": {"source": "builtin:wine"}})
    with pytest.raises(UserError, match="use task: tabular_classification"):
        prepare(cfg, Path("."))
    cfg, _ = load_config({"task": "tabular_classification", "data": {"source": "builtin:diabetes"}})
    with pytest.raises(UserError, match="use task: tabular_regression"):
        prepare(cfg, Path("."))


def test_regression_metrics_agree_with_scikit_learn_and_show_the_mean_baseline():
    rng = np.random.default_rng(1)
    truth = rng.normal(10, 3, 50)
    predicted = truth + rng.normal(0, 1, 50)
    m = regression_metrics(predicted, truth, train_mean=9.5)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(truth, predicted)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(truth, predicted))
    assert m["r2"] == pytest.approx(skm.r2_score(truth, predicted))
    assert m["mape"] == pytest.approx(skm.mean_absolute_percentage_error(truth, predicted))
    assert m["baseline"]["rmse"] == pytest.approx(np.sqrt(np.mean((truth - 9.5) ** 2)))
    assert m["rmse"] < m["baseline"]["rmse"]


def test_mape_is_left_out_with_a_note_when_a_true_value_is_zero():
    m = regression_metrics(np.array([0.5, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]), train_mean=1.0)
    assert m["mape"] is None and "mape" in m["notes"][0]


def test_validation_numbers_are_in_the_targets_units():
    objective = RegressionObjective("mse", std=10.0)
    outputs = torch.tensor([[0.0], [1.0], [2.0]])
    targets = torch.tensor([0.0, 1.5, 2.0])
    m = objective.metrics(outputs, targets)
    assert m["val_rmse"] == pytest.approx(10 * np.sqrt(0.25 / 3))
    assert m["val_mae"] == pytest.approx(10 * 0.5 / 3)
    assert m["val_loss"] == pytest.approx(0.25 / 3)


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_each_regression_loss_trains_a_model_that_beats_the_mean(tmp_path, loss):
    from modelfoundry.builder import build
    from modelfoundry.training.loop import fit, predict_logits

    path = write_prices(tmp_path)
    cfg, _ = load_config(
        {
            **REGRESSION,
            "data": {"source": str(path), "label": "price"},
            "model": {"name": "mlp", "hidden": [16]},
            "train": {"epochs": 40, "lr": 0.01, "loss": loss, "precision": "fp32"},
        }
    )
    data = prepare(cfg, tmp_path)
    built = build(cfg, tmp_path, data, torch.device("cpu"))
    from rich.console import Console

    fit(
        built.model,
        data.train,
        data.val,
        cfg.train,
        device=torch.device("cpu"),
        objective=built.objective,
        console=Console(quiet=True),
    )
    task = get_task("tabular_regression")
    spec = {"target": data.target}
    m = task.metrics(
        task.predictions(predict_logits(built.model, data.test), spec), data.test.targets.numpy(), spec
    )
    assert m["r2"] > 0.8 and m["rmse"] < 0.5 * m["baseline"]["rmse"]
