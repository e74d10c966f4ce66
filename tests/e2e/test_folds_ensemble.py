"""`foundry train --folds`, `--folds-ensemble` and `foundry ensemble` through the real CLI: the numbers a user
reads, the ensemble as a model version that predicts and serves, and one clear message per bad input."""

from __future__ import annotations

import json
import shutil

from conftest import TrainedRun

from e2e_helpers import TINY_MLP, assert_ok, assert_user_error, foundry, one_line, write_config, write_table


def test_folds_report_mean_and_std_keep_the_test_split_and_stack_on_out_of_fold_predictions(tmp_path):
    home = tmp_path / "runs"
    write_table(tmp_path / "train.csv")
    config = write_config(tmp_path / "table.yaml", "tabular_classification", "train.csv")
    plain = ["train", config, *TINY_MLP]
    result = foundry(*plain, "--folds", "3", "--run-dir", home / "a", cwd=tmp_path, home=home)
    assert_ok(result)
    shown = one_line(result.stdout)
    assert "val accuracy (3 folds)" in shown and "±" in shown
    assert "the 12 test examples stay out of every fold" in one_line(result.stderr)
    metrics = json.loads((home / "a" / "metrics.json").read_text())
    folds = metrics["folds"]
    assert len(folds["per_fold"]) == 3 and folds["examples"] == 48
    assert {"accuracy", "f1_macro", "loss"} <= set(folds["std"])
    assert "trained on all 48 train+val examples" in folds["final"]
    # the final model trained on train+val and is tested on the very test split a run without folds has
    assert json.loads((home / "a" / "data_report.json").read_text())["splits"] == {
        "train": 48,
        "val": 0,
        "test": 12,
    }
    assert "Cross-validation (3 folds)" in (home / "a" / "report.html").read_text()

    result = foundry(
        *plain, "--folds", "3", "--folds-ensemble", "--set", "train.lr=0.01", "--run-dir", home / "b",
        cwd=tmp_path, home=home,
    )  # fmt: skip
    assert_ok(result)
    spec = json.loads((home / "b" / "model" / "model.json").read_text())
    assert [m["run"] for m in spec["ensemble"]["members"]] == ["fold-1", "fold-2", "fold-3"]

    compared = foundry("runs", "compare", "a", "b", cwd=tmp_path, home=home)
    assert_ok(compared)
    assert "val accuracy: a - b =" in one_line(compared.stdout)
    assert "paired standard error" in one_line(compared.stdout) and "over the same 3 folds" in compared.stdout

    result = foundry("ensemble", "a", "b", "--method", "stack", cwd=tmp_path, home=home)
    assert_ok(result)
    assert "fitted on out-of-fold predictions of 3 folds (48 train+val examples)" in one_line(result.stderr)
    ensemble = home / result.stdout.split()[1]
    report = (ensemble / "report.html").read_text()
    assert "Members and the ensemble" in report and "a (mlp)" in report and "b (ensemble)" in report


def test_an_ensemble_of_two_runs_fits_weights_on_validation_by_default_and_serves(
    table_run, table_run_lr, tmp_path, client_for
):
    home = tmp_path / "runs"
    shutil.copytree(table_run.home, home)  # our own registry: the shared one stays as other tests expect
    result = foundry("ensemble", table_run.id, table_run_lr.id, cwd=tmp_path, home=home)
    assert_ok(result)
    assert "weighted: fitted on the validation split" in one_line(result.stderr)
    ensemble = home / result.stdout.split()[1]
    weights = json.loads((ensemble / "metrics.json").read_text())["ensemble"]["combiner"]["weights"]
    assert len(weights) == 2 and abs(sum(weights) - 1) < 1e-6
    client = client_for(TrainedRun(home, ensemble, table_run.data, "", ""), batch_chunk=32, max_batch_size=8)
    assert client.get("/v1/model").json()["model"] == "ensemble"
    answer = client.post("/v1/predict", json={"inputs": [{"x1": 6.0, "x2": -2.0, "color": "red"}] * 3})
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in ("a", "b", "c")
    missing = client.post("/v1/predict", json={"inputs": [{"x1": 6.0}]})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "inputs.0"
    # a file, scored in chunks of 32 queued in pieces of 8: the same answers as `foundry predict`
    scored = client.post(
        "/v1/predict/batch",
        files={"file": ("rows.csv", table_run.data.read_bytes())},
        params={"format": "csv"},
    )
    assert scored.status_code == 200, scored.text
    result = foundry(
        "predict", ensemble.name, table_run.data, "--output", tmp_path / "cli.csv", cwd=tmp_path, home=home
    )
    assert_ok(result)
    assert scored.text == (tmp_path / "cli.csv").read_text()


def test_bad_folds_and_members_get_one_message_each(table_run, tmp_path):
    home = tmp_path / "runs"
    write_table(tmp_path / "train.csv")
    config = write_config(tmp_path / "table.yaml", "tabular_classification", "train.csv")
    assert_user_error(
        foundry("train", config, "--folds", "1", cwd=tmp_path, home=home), "train.folds", "use 2 or more"
    )
    assert_user_error(
        foundry("train", config, "--folds", "20", cwd=tmp_path, home=home),
        "--folds 20",
        "has 16 example(s) in train+val",
        "Use --folds 16 or fewer",
    )
    assert_user_error(
        foundry("ensemble", table_run.path, "no-such-run", cwd=tmp_path, home=home),
        "member 'no-such-run'",
        "foundry models list",
    )
