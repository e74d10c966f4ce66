"""The linear family (`model.name: linear`, logistic regression) through the real CLI on a tiny table: trained
by L-BFGS with its recipe, packaged as a network's weights, predicted from a file, exported to ONNX with the
same answers."""

from __future__ import annotations

import json

import yaml

import modelfoundry as mf
from e2e_helpers import assert_ok, foundry, table_frame, write_config, write_table


def test_a_linear_model_trains_predicts_and_exports_through_the_cli(tmp_path):
    write_table(tmp_path / "train.csv")
    config = yaml.safe_load(
        write_config(tmp_path / "c.yaml", "tabular_classification", "train.csv").read_text()
    )
    config["model"] = {"name": "linear"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run, home = tmp_path / "run", tmp_path / "h"

    trained = foundry("train", tmp_path / "c.yaml", "--run-dir", run, cwd=tmp_path, home=home)
    assert_ok(trained)
    assert "recipe: linear defaults for keys the config leaves unset: model.l2=auto" in trained.stderr
    assert "linear: fitted by L-BFGS" in trained.stderr and "1/N for" in trained.stderr
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.8
    spec = json.loads((run / "model" / "model.json").read_text())
    assert spec["model"]["name"] == "linear" and 0 < spec["model"]["options"]["l2"] < 0.1  # 1/N, saved

    rows = table_frame(per_class=3, seed=1).drop(columns=["label"])
    rows.to_csv(tmp_path / "new.csv", index=False)
    predicted = foundry("predict", run, tmp_path / "new.csv", cwd=tmp_path, home=home)
    assert_ok(predicted)
    labels = mf.load(run).predict(rows)
    assert all(label in predicted.stdout for label in labels)

    assert_ok(foundry("export", run, cwd=tmp_path, home=home))
    assert mf.load(run, backend="onnx").predict(rows) == labels
