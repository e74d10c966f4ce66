"""The user's path through the real CLI: init -> train -> predict / evaluate -> runs, and loading the
packaged model in a fresh process without the data or the config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from e2e_helpers import (
    IMAGE_LABELS,
    TABLE_LABELS,
    assert_ok,
    cli_env,
    foundry,
    one_line,
    table_frame,
    write_png,
)

pytestmark = pytest.mark.slow  # every test here trains a model or reads one a fixture trained


def test_init_config_trains_into_a_complete_run_folder(image_run):
    run = image_run.path
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        config["task"],
        config["data"]["source"],
        config["model"]["width"],
        config["train"]["epochs"],
    ) == ("image_classification", "images", 4, 1)

    metrics = json.loads((run / "metrics.json").read_text())
    test, val = metrics["test"], metrics["val"]
    assert 0 <= test["accuracy"] <= 1 and 0 <= test["f1_macro"] <= 1 and 0 <= val["accuracy"] <= 1
    confusion = np.array(test["confusion_matrix"])
    assert confusion.shape == (2, 2) and confusion.sum() == test["n"] > 0
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert "val_loss" in metrics["history"][0]

    assert "<html" in (run / "report.html").read_text().lower()
    package = json.loads((run / "model" / "model.json").read_text())
    assert package["labels"] == list(IMAGE_LABELS) and package["task"] == "image_classification"
    assert (run / "model" / "model.safetensors").stat().st_size > 0
    assert (run / "checkpoints" / "last.pt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert f"model:  {run / 'model'}" in image_run.train_stdout  # the summary says where the model is
    assert f"{test['accuracy']:.4f}" in image_run.train_stdout and "test accuracy" in image_run.train_stdout


def test_train_summary_names_the_run_id_in_one_piece(image_run):
    # The id is what `predict`, `evaluate` and `runs show` take; a user copies it from this title.
    assert f"run {image_run.id}" in image_run.train_stdout, image_run.train_stdout


def test_predict_prints_a_label_for_each_image_file_and_folder_image(image_run, tmp_path):
    rng = np.random.default_rng(1)
    write_png(tmp_path / "one.png", 200, rng)
    (tmp_path / "more").mkdir()
    for i in range(2):
        write_png(tmp_path / "more" / f"{i}.png", 80, rng)

    result = foundry("predict", image_run.id, "one.png", "more", cwd=tmp_path, home=image_run.home)

    assert_ok(result)
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    for name in ("one.png", "more/0.png", "more/1.png"):
        assert name in rows, result.stdout
        label, probability = rows[name]
        assert label in IMAGE_LABELS and 0.5 <= float(probability) <= 1


def test_predict_a_table_writes_a_csv_with_a_label_per_row(table_run, tmp_path):
    table_frame(per_class=2, seed=1).drop(columns="label").to_csv(tmp_path / "rows.csv", index=False)

    result = foundry(
        "predict", table_run.path, "rows.csv", "-o", "out.csv", cwd=tmp_path, home=table_run.home
    )

    assert_ok(result)
    assert "wrote 6 predictions to out.csv" in result.stdout
    predictions = pd.read_csv(tmp_path / "out.csv")
    assert len(predictions) == 6
    assert set(predictions["label"]) <= set(TABLE_LABELS)
    assert predictions["probability"].between(1 / 3, 1).all()


def test_evaluate_on_new_labelled_data_prints_and_saves_metrics(table_run, tmp_path):
    table_frame(per_class=5, seed=2).to_csv(tmp_path / "other.csv", index=False)

    result = foundry("evaluate", table_run.id, "--data", "other.csv", cwd=tmp_path, home=table_run.home)

    assert_ok(result)
    saved = list((table_run.path / "evaluations").glob("other-*/metrics.json"))
    assert len(saved) == 1
    metrics = json.loads(saved[0].read_text())
    assert metrics["test"]["n"] == 15
    assert "accuracy" in result.stdout and f"{metrics['test']['accuracy']:.4f}" in result.stdout
    assert (saved[0].parent / "report.html").is_file()


def test_runs_list_shows_each_run_as_completed(table_run, table_run_lr, tmp_path):
    result = foundry("runs", "list", cwd=tmp_path, home=table_run.home)

    assert_ok(result)
    for run in (table_run, table_run_lr):
        line = next((line for line in result.stdout.splitlines() if run.id in line), None)
        assert line is not None and "completed" in line, result.stdout


def test_runs_show_prints_the_record_of_one_run(table_run, tmp_path):
    result = foundry("runs", "show", table_run.id, cwd=tmp_path, home=table_run.home)

    assert_ok(result)
    assert f'"id": "{table_run.id}"' in result.stdout
    assert '"status": "completed"' in result.stdout
    assert '"lr": 0.01' in result.stdout


def test_runs_compare_shows_only_config_keys_that_differ(table_run, table_run_lr, tmp_path):
    result = foundry("runs", "compare", table_run.id, table_run_lr.id, cwd=tmp_path, home=table_run.home)

    assert_ok(result)
    lr_line = next((line for line in result.stdout.splitlines() if "train.lr" in line), "")
    assert "0.01" in lr_line and "0.003" in lr_line, result.stdout
    assert "train.epochs" not in result.stdout  # equal in both runs, so not a difference
    assert "test_accuracy" in result.stdout


def test_packaged_model_predicts_in_a_fresh_process_without_data_or_config(image_run, table_run, tmp_path):
    image_package = shutil.copytree(image_run.path / "model", tmp_path / "image-model")
    table_package = shutil.copytree(table_run.path / "model", tmp_path / "table-model")
    write_png(tmp_path / "new.png", 200, np.random.default_rng(3))
    rows = [{"x1": 0.2, "x2": 0.1, "color": "red"}, {"x1": 6.1, "x2": -2.2, "color": "blue"}]
    script = (
        "import json, sys, modelfoundry as mf\n"
        f"print(json.dumps(mf.load({str(image_package)!r}).predict([{str(tmp_path / 'new.png')!r}])))\n"
        f"print(json.dumps(mf.load({str(table_package)!r}).predict({rows!r})))\n"
    )
    hidden = [(data, data.with_name(data.name + ".hidden")) for data in (image_run.data, table_run.data)]
    try:
        for data, away in hidden:
            data.rename(away)
        result = subprocess.run(
            [sys.executable, "-c", script],
            check=False,
            cwd=tmp_path,
            env=cli_env(tmp_path / "no-runs"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        for data, away in hidden:
            away.rename(data)

    assert_ok(result)
    image_labels, table_labels = (json.loads(line) for line in result.stdout.splitlines())
    assert len(image_labels) == 1 and image_labels[0] in IMAGE_LABELS
    assert len(table_labels) == 2 and set(table_labels) <= set(TABLE_LABELS)


def test_corrupt_image_among_good_ones_is_skipped_with_a_warning_naming_it(image_run):
    warning = one_line(image_run.train_stderr)
    assert "warning:" in warning and "broken.png" in warning and "not a readable image" in warning
    report = json.loads((image_run.path / "data_report.json").read_text())
    assert len(report["unreadable"]) == 1 and "broken.png" in report["unreadable"][0]
    assert report["n_examples"] == 24  # the good images, not the broken one
