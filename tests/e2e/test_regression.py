"""Tabular regression through the real CLI and server: train, predict, evaluate new data, export,
compress, serve a number, take a corrected number as feedback, retrain and compare on RMSE."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest

import modelfoundry as mf
from e2e_helpers import Server, assert_ok, assert_user_error, foundry, one_line, write_config


def price_frame(rows: int = 240, seed: int = 0) -> pd.DataFrame:
    """A price that a size, a room count and a city decide, plus a little noise."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "size": rng.uniform(20, 200, rows).round(1),
            "rooms": rng.integers(1, 6, rows),
            "city": rng.choice(["north", "south"], rows),
        }
    )
    frame["price"] = (
        1000
        + 30 * frame["size"]
        + 50 * frame["rooms"]
        + (frame["city"] == "north") * 400
        + rng.normal(0, 20, rows)
    ).round(2)
    return frame


def price_config(folder, **train):
    price_frame().to_csv(folder / "prices.csv", index=False)
    return write_config(
        folder / "prices.yaml",
        "tabular_regression",
        "prices.csv",
        data={"label": "price"},
        model={"hidden": [16]},
        train={"epochs": 60, "lr": 0.01, "precision": "fp32", **train},
    )


@pytest.fixture(scope="module")
def price_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    home = folder / "runs"
    result = foundry("train", price_config(folder), "--run-dir", home / "prices", cwd=folder, home=home)
    assert_ok(result)
    return folder, home, home / "prices", result


def test_training_reports_rmse_against_the_mean_and_packages_a_model_that_predicts_numbers(price_run):
    _folder, _home, run, result = price_run
    assert "test rmse" in result.stdout and "test r2" in result.stdout and "rmse of the mean" in result.stdout
    assert "val_rmse" in result.stderr  # the epoch lines
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["r2"] > 0.9 and test["rmse"] < 0.3 * test["baseline"]["rmse"]
    assert set(test) >= {"rmse", "mae", "r2", "mape", "baseline"}
    report = (run / "report.html").read_text()
    assert "Predicted vs true" in report and "RMSE of predicting the training mean" in report
    assert "error " in report  # the worst mistakes show their error, not a confidence

    predictor = mf.load(run)
    rows = price_frame(rows=5, seed=3)
    values = predictor.predict(rows.drop(columns=["price"]))
    assert all(isinstance(v, float) for v in values)
    assert np.abs(np.array(values) - rows["price"].to_numpy()).max() < 0.2 * rows["price"].std() + 150


def test_predict_writes_the_value_and_evaluate_scores_new_labelled_rows(price_run, tmp_path):
    folder, home, run, _ = price_run
    new = price_frame(rows=40, seed=7)
    new.drop(columns=["price"]).to_csv(tmp_path / "rows.csv", index=False)
    assert_ok(
        foundry("predict", run, tmp_path / "rows.csv", "-o", tmp_path / "out.csv", cwd=folder, home=home)
    )
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["input", "prediction"]
    expected = mf.load(run).predict(new.drop(columns=["price"]))
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-5)

    new.rename(columns={"price": "sold_for"}).to_csv(tmp_path / "labelled.csv", index=False)
    assert_user_error(
        foundry("evaluate", run, "--data", tmp_path / "labelled.csv", cwd=folder, home=home),
        "label column 'price' not found",
    )
    result = foundry(
        "evaluate", run, "--data", tmp_path / "labelled.csv", "--label", "sold_for", cwd=folder, home=home
    )
    assert_ok(result)
    assert "rmse" in result.stdout and "r2" in result.stdout
    scored = json.loads(next((run / "evaluations").glob("labelled-*/metrics.json")).read_text())["test"]
    assert scored["n"] == 40 and scored["r2"] > 0.8


def test_a_text_in_the_target_column_stops_training_naming_the_row(tmp_path):
    price_config(tmp_path)
    frame = pd.read_csv(tmp_path / "prices.csv")
    frame["price"] = frame["price"].astype(object)
    frame.loc[11, "price"] = "ask us"
    frame.to_csv(tmp_path / "prices.csv", index=False)
    result = foundry("train", tmp_path / "prices.yaml", cwd=tmp_path, home=tmp_path / "runs")
    message = one_line(assert_user_error(result, "column 'price'"))
    assert "row 12 (line 13 of prices.csv)" in message and "'ask us' is not a number" in message


def test_export_and_int8_keep_the_values(price_run):
    folder, home, run, _ = price_run
    assert_ok(foundry("export", run, "--format", "onnx", cwd=folder, home=home))
    rows = price_frame(rows=20, seed=5).drop(columns=["price"])
    torch_values = np.array(mf.load(run).predict(rows))
    onnx_values = np.array(mf.load(run, backend="onnx").predict(rows))
    np.testing.assert_allclose(onnx_values, torch_values, rtol=1e-4, atol=1e-2)
    result = foundry("compress", run, "--quantize", "int8", cwd=folder, home=home)
    assert_ok(result)
    int8 = np.array(mf.load(home / "prices-int8").predict(rows))
    assert np.abs(int8 - torch_values).max() < 0.05 * rows.shape[0] * 100  # same ballpark as fp32
    assert np.corrcoef(int8, torch_values)[0, 1] > 0.99


@pytest.mark.slow
def test_served_numbers_take_corrected_numbers_and_retrain_compares_on_rmse(tmp_path):
    home = tmp_path / "runs"
    assert_ok(
        foundry("train", price_config(tmp_path), "--run-dir", home / "champion", cwd=tmp_path, home=home)
    )
    assert_ok(foundry("models", "alias", "champion", "champion", cwd=tmp_path, home=home))
    rows = price_frame(rows=12, seed=9)
    with (
        Server("champion", cwd=tmp_path, home=home) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        card = http.get("/v1/model").json()
        assert card["task"] == "tabular_regression" and card["target"]["column"] == "price"
        answer = http.post(
            "/v1/predict", json={"inputs": rows.drop(columns=["price"]).to_dict("records")}
        ).json()
        values = [p["prediction"] for p in answer["predictions"]]
        assert len(values) == 12 and all(isinstance(v, float) for v in values)
        np.testing.assert_allclose(
            values, mf.load(home / "champion").predict(rows.drop(columns=["price"])), rtol=1e-5
        )
        for i, truth in enumerate(rows["price"]):
            stored = http.post(
                "/v1/feedback", json={"request_id": answer["request_id"], "index": i, "label": truth}
            )
            assert stored.status_code == 201, stored.text
        refused = http.post(
            "/v1/feedback", json={"request_id": answer["request_id"], "index": 0, "label": "pricey"}
        )
        assert refused.status_code == 422 and "not a finite number" in refused.json()["error"]["message"]

    result = foundry("retrain", "champion", cwd=tmp_path, home=home)
    assert_ok(result)
    comparison = json.loads(next(home.glob("*-retrain-*/comparison.json")).read_text())
    assert comparison["metric"] == "rmse" and comparison["higher_is_better"] is False
    assert comparison["examples"]["holdout"] > 0 and comparison["champion"]["holdout"] > 0
    assert "rmse" in comparison["decision"]
