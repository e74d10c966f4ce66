"""The linear family: logistic regression for classes and ridge regression for a number, fitted by L-BFGS
(models/linear.py); its options are checked before anything trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelfoundry.config import load_config
from modelfoundry.data.prepare import ArrayData
from modelfoundry.errors import UserError
from modelfoundry.models.linear import fit_linear
from modelfoundry.models.registry import build_model, check_options
from modelfoundry.tasks.base import Objective
from modelfoundry.tasks.regression import RegressionObjective


def fitted(x: np.ndarray, y: np.ndarray, outputs: int, objective, **options):
    """A linear model fitted on the first 80 rows, validated on the rest."""
    model = build_model("linear", (x.shape[1],), outputs, **options)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y)
    result = fit_linear(
        model,
        ArrayData(x[:80], y[:80]),
        ArrayData(x[80:], y[80:]),
        None,
        device=torch.device("cpu"),
        objective=objective,
    )
    return model, result, x, y


def test_a_linearly_separable_table_is_classified_without_a_mistake():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    score = x[:, 0] - 2 * x[:, 1]  # a plane through the origin separates the classes, with a margin
    x = x[np.abs(score) > 1][:120]
    y = (x[:, 0] - 2 * x[:, 1] > 0).astype(np.int64)
    model, result, xs, ys = fitted(x, y, 2, Objective())
    with torch.no_grad():
        predicted = model(xs).argmax(1)
    assert (predicted == ys).all()  # training and validation rows alike
    assert result.history[0]["val_accuracy"] == 1.0 and result.best_epoch == 1
    assert model.resolved_options == {"l2": 1 / 80}  # scikit-learn's C=1 on the 80 training rows


def test_a_linear_target_is_fitted_almost_exactly():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4))
    y = (x @ np.array([1.5, -2.0, 0.5, 0.0]) + 0.05 * rng.normal(size=120)).astype(np.float32)
    model, result, _, _ = fitted(x, y, 1, RegressionObjective("mse", 1.0))
    assert result.history[0]["val_r2"] > 0.99
    np.testing.assert_allclose(model.linear.weight.detach().numpy()[0], [1.5, -2.0, 0.5, 0.0], atol=0.05)


def test_a_set_l2_shrinks_the_weights_toward_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 2))
    y = (x @ np.array([1.0, -1.0])).astype(np.float32)
    weak, _, _, _ = fitted(x, y, 1, RegressionObjective("mse", 1.0))
    strong, _, _, _ = fitted(x, y, 1, RegressionObjective("mse", 1.0), l2=1.0)
    assert strong.resolved_options == {"l2": 1.0}
    assert strong.linear.weight.abs().sum() < 0.7 * weak.linear.weight.abs().sum()  # about 1 / (1 + l2)


def test_bad_linear_options_are_named_before_anything_trains():
    assert check_options("linear", {"l2": -1}) == [
        "model.l2: -1 must be a number, 0 or more or one of 'auto'."
    ]
    (problem,) = check_options("linear", {"hidden": [8]})
    assert problem.startswith("model.hidden: not an option of 'linear'.") and "l2 (default 'auto')" in problem
    with pytest.raises(UserError, match="model.l2: 'strong' must be"):
        load_config(
            {
                "task": "tabular_classification",
                "data": {"source": "builtin:wine"},
                "model": {"name": "linear", "l2": "strong"},
            }
        )
    with pytest.raises(UserError, match="'linear' takes tables"):
        build_model("linear", (1, 8, 8), 3)
