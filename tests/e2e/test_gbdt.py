"""Gradient-boosted trees (`model.name: gbdt`) and `model.name: auto` through the real CLI on tiny tables:
trained, packaged as LightGBM text (never a pickle), predicted, served, tuned; auto picks a family and says
why; bad options exit 2 naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

import modelfoundry as mf
from e2e_helpers import assert_ok, assert_user_error, foundry, table_frame, write_config, write_table

SMALL = {"name": "gbdt", "n_estimators": 40, "min_child_samples": 3, "num_leaves": 4}


def config_with(path: Path, task: str, source: str, model: dict, **sections) -> Path:
    """`write_config`'s config with this `model:` section in place of its MLP."""
    config = yaml.safe_load(write_config(path, task, source, **sections).read_text())
    config["model"] = model
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def gbdt_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gbdt")
    write_table(folder / "train.csv")
    config = config_with(folder / "trees.yaml", "tabular_classification", "train.csv", SMALL)
    result = foundry(
        "train", config, "--run-dir", folder / "runs" / "trees", cwd=folder, home=folder / "runs"
    )
    assert_ok(result)
    return folder, folder / "runs" / "trees", result


def test_gbdt_trains_with_its_recipe_and_packages_lightgbm_text_that_predicts_alike(gbdt_run):
    folder, run, result = gbdt_run
    assert "recipe: gbdt defaults" in result.stderr and "early_stopping_patience=50" in result.stderr
    assert "boosted" in result.stderr and "trees" in result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.8  # the two numeric columns separate the classes

    files = sorted(p.name for p in (run / "model").iterdir())
    assert files == ["lightgbm.txt", "model.json", "model.safetensors"]  # no pickle anywhere
    rows = table_frame(seed=1).drop(columns=["label"])
    predictor = mf.load(run)
    probabilities = predictor.predict_proba(rows)
    assert probabilities.shape == (len(rows), 3) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    # LightGBM itself reads the package's text model and gives the same probabilities
    booster = lightgbm.Booster(model_file=str(run / "model" / "lightgbm.txt"))
    features = predictor.encode(rows).numpy()
    np.testing.assert_allclose(booster.predict(features), probabilities, atol=1e-5)

    rows.head(5).to_csv(folder / "new.csv", index=False)
    predicted = foundry("predict", run, folder / "new.csv", cwd=folder, home=folder / "runs")
    assert_ok(predicted)
    assert all(label in predicted.stdout for label in predictor.predict(rows.head(5)))


def test_a_served_gbdt_answers_takes_feedback_and_retrains_into_a_gbdt_challenger(gbdt_run, monkeypatch):
    from modelfoundry.serve.app import Settings, create_app

    folder, run, _ = gbdt_run
    home = folder / "runs"
    assert_ok(foundry("models", "alias", "trees", "champion", cwd=folder, home=home))
    monkeypatch.setenv("FOUNDRY_HOME", str(home))
    monkeypatch.delenv("FOUNDRY_DB", raising=False)
    app = create_app(Settings("champion", allowed_hosts=["testserver"]))
    rows = table_frame(per_class=4, seed=2).drop(columns=["label"]).to_dict(orient="records")
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        answer = client.post("/v1/predict", json={"inputs": rows})
        assert answer.status_code == 200, answer.text
        assert {p["label"] for p in answer.json()["predictions"]} <= set(mf.load(run).labels)
        bad = client.post("/v1/predict", json={"inputs": [{**rows[0], "x1": "lots"}]})
        assert bad.status_code == 422 and "inputs.0.x1" in bad.text
        for i in range(len(rows)):
            stored = client.post(
                "/v1/feedback", json={"request_id": answer.json()["request_id"], "index": i, "label": "c"}
            )
            assert stored.status_code == 201, stored.text
    retrained = foundry("retrain", "champion", cwd=folder, home=home)
    assert_ok(retrained)
    assert "boosted" in retrained.stderr  # the challenger is a gbdt too, trained on the corrections
    (challenger,) = [p for p in home.glob("*-retrain-*") if (p / "model" / "model.json").is_file()]
    assert json.loads((challenger / "model" / "model.json").read_text())["model"]["name"] == "gbdt"


def test_export_of_a_gbdt_says_why_it_cannot(gbdt_run):
    folder, run, _ = gbdt_run
    assert_user_error(foundry("export", run, cwd=folder, home=folder / "runs"), "gbdt", "no ONNX export")


def test_a_gbdt_predicts_numbers_in_the_targets_units(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, (200, 2))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "price": 1000 + 50 * x[:, 0] - 20 * x[:, 1]})
    frame.to_csv(tmp_path / "prices.csv", index=False)
    config = config_with(
        tmp_path / "p.yaml",
        "tabular_regression",
        "prices.csv",
        {"name": "gbdt", "n_estimators": 300, "min_child_samples": 5},
        data={"label": "price"},
    )
    assert_ok(foundry("train", config, "--run-dir", tmp_path / "run", cwd=tmp_path, home=tmp_path / "h"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["r2"] > 0.9
    predicted = mf.load(tmp_path / "run").predict({"a": 5.0, "b": 5.0})[0]
    assert abs(predicted - 1150) < 60  # in dollars, not standardised units


def test_auto_is_the_default_for_tables_and_says_what_it_picked_and_why(tmp_path):
    write_table(tmp_path / "train.csv")
    config = tmp_path / "auto.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "tabular_classification",
                "data": {"source": "train.csv", "label": "label"},
                "train": {"epochs": 3},
            }
        )
    )
    result = foundry("train", config, "--run-dir", tmp_path / "run", cwd=tmp_path, home=tmp_path / "h")
    assert_ok(result)
    assert all(f"auto: candidate {name}" in result.stderr for name in ("gbdt", "mlp", "linear"))
    line = next(x for x in result.stderr.splitlines() if x.startswith("auto: picked"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    picked = metrics["auto"]["picked"]
    # a few dozen validation rows would pick by luck: the candidates are compared out of 5 folds of train
    assert set(metrics["auto"]["candidates"]) == {"gbdt", "mlp", "linear"}
    assert metrics["auto"]["folds"] == 5
    assert all(len(c["per_fold"]) == 5 for c in metrics["auto"]["candidates"].values())
    best = min(metrics["auto"]["candidates"], key=lambda n: metrics["auto"]["candidates"][n]["val_loss"])
    assert line.startswith(
        f"auto: picked {picked}: the lowest val_loss out of 5 folds of "
        if picked == best
        else f"auto: picked {picked}: {picked}, simpler, is within one standard error of {best}"
    )
    assert metrics["auto"]["candidates"]["gbdt"]["recipe"]["model.learning_rate"] == "0.05"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (
        saved["model"]["name"]
        == picked
        == json.loads(Path(tmp_path / "run/model/model.json").read_text())["model"]["name"]
    )
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Model choice (auto)" in report
    # the picked family's final model is trained again on train+val, and the run says so
    splits = json.loads((tmp_path / "run" / "data_report.json").read_text())["splits"]
    assert metrics["refit"]["examples"] == splits["train"] + splits["val"] and saved["train"]["refit"] is True
    both = splits["train"] + splits["val"]
    assert f"refit: training {picked} again on the {both} train+val" in result.stderr
    assert "Final model: trained again on train+val" in report
    assert "<h3>Columns</h3>" in report and "<td>color</td><td>category</td>" in report  # each column's role


def test_bad_gbdt_options_and_auto_with_options_exit_2_naming_the_key(tmp_path):
    write_table(tmp_path / "train.csv")
    bad = config_with(
        tmp_path / "bad.yaml",
        "tabular_classification",
        "train.csv",
        {"name": "gbdt", "num_leaves": 1, "learning_rate": 0, "n_trees": 5},
    )
    assert_user_error(
        foundry("train", bad, cwd=tmp_path, home=tmp_path / "h"),
        "model.num_leaves: 1 must be a whole number, 2 or more",
        "model.learning_rate: 0 must be a number in (0, 1]",
        "model.n_trees: not an option of 'gbdt'",
    )
    auto = config_with(
        tmp_path / "auto.yaml", "tabular_classification", "train.csv", {"name": "auto", "hidden": [8]}
    )
    assert_user_error(
        foundry("train", auto, cwd=tmp_path, home=tmp_path / "h"),
        "model.hidden: model.name auto takes no options",
    )


@pytest.mark.slow
def test_tune_searches_gbdt_options(tmp_path):
    write_table(tmp_path / "train.csv")
    config = config_with(
        tmp_path / "trees.yaml",
        "tabular_classification",
        "train.csv",
        SMALL,
        tune={
            "space": {"model.num_leaves": {"choice": [2, 4]}, "model.learning_rate": {"uniform": [0.05, 0.3]}}
        },
    )
    result = foundry("tune", config, "--trials", "2", cwd=tmp_path, home=tmp_path / "runs")
    assert_ok(result)
    best = yaml.safe_load((tmp_path / "runs" / "tune" / "trees" / "best_config.yaml").read_text())
    assert best["model"]["name"] == "gbdt" and best["model"]["num_leaves"] in (2, 4)
