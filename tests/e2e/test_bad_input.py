"""Mistakes a user can make: each ends with exit status 2 and one message that names the file, key or
column, the bad value, and how to fix it, never with a traceback."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from e2e_helpers import (
    assert_ok,
    assert_user_error,
    foundry,
    one_line,
    table_frame,
    write_config,
    write_image_folder,
    write_table,
)


def train(tmp_path, config, *args):
    return foundry("train", config, *args, cwd=tmp_path, home=tmp_path / "runs")


def table_config(tmp_path, frame: pd.DataFrame | None = None, **sections):
    write_table(tmp_path / "data.csv", frame)
    return write_config(tmp_path / "table.yaml", "tabular_classification", "data.csv", **sections)


# ---------------------------------------------------------------------------------------- config


def test_missing_config_file(tmp_path):
    assert_user_error(train(tmp_path, "missing.yaml"), "missing.yaml", "not found", "foundry init")


def test_invalid_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("task: image_classification\ndata: {source: [unclosed\n")
    # The message quotes the offending line, so the user sees the unclosed bracket.
    assert_user_error(
        train(tmp_path, "bad.yaml"), "bad.yaml", "not valid YAML", "line 2", "{source: [unclosed"
    )


def test_unknown_config_key_suggests_the_nearest(tmp_path):
    config = write_config(
        tmp_path / "config.yaml", "image_classification", "builtin:digits", train={"epoch": 3}
    )
    assert_user_error(train(tmp_path, config), "train.epoch: unknown key", "Did you mean 'epochs'?")


def test_wrong_type_and_out_of_range_values_are_reported_together_naming_each_key(tmp_path):
    config = write_config(
        tmp_path / "config.yaml", "image_classification", "builtin:digits", train={"epochs": "many", "lr": -1}
    )
    message = assert_user_error(
        train(tmp_path, config),
        "config.yaml",
        "2 problem(s)",
        "train.epochs",
        "'many'",
        "valid integer",
        "train.lr",
        "-1",
        "greater than 0",
    )
    assert message.index("train.epochs") < message.index("'many'") < message.index("train.lr")


def test_resume_with_no_stopped_run_of_the_config(tmp_path):
    config = write_config(tmp_path / "config.yaml", "image_classification", "builtin:digits")
    assert_user_error(
        train(tmp_path, config, "--resume"),
        "--resume: no stopped or interrupted run of this config",
        "--run-dir",
    )


def test_resume_a_run_dir_without_checkpoint(tmp_path):
    config = write_config(tmp_path / "config.yaml", "image_classification", "builtin:digits")
    (tmp_path / "fresh").mkdir()
    assert_user_error(
        train(tmp_path, config, "--run-dir", "fresh", "--resume"),
        "fresh",
        "nothing to resume",
        "without --resume",
    )


# ---------------------------------------------------------------------------------- data sources


def test_missing_data_path(tmp_path):
    config = write_config(tmp_path / "config.yaml", "image_classification", "no_such_folder")
    assert_user_error(train(tmp_path, config), "data.source", "'no_such_folder' not found", "builtin:digits")


def test_unknown_builtin_suggests_the_nearest(tmp_path):
    config = write_config(tmp_path / "config.yaml", "image_classification", "builtin:digit")
    assert_user_error(train(tmp_path, config), "builtin:digit'", "Did you mean 'digits'?")


def test_tabular_task_pointed_at_a_folder(tmp_path):
    write_image_folder(tmp_path / "images", per_class=1)
    config = write_config(tmp_path / "config.yaml", "tabular_classification", "images")
    assert_user_error(train(tmp_path, config), "images", "is a folder", "tabular_classification", ".csv")


def test_image_task_pointed_at_a_csv(tmp_path):
    write_table(tmp_path / "data.csv")
    config = write_config(tmp_path / "config.yaml", "image_classification", "data.csv")
    assert_user_error(train(tmp_path, config), "data.csv", "is a file", "sub-folder per class")


def test_image_folder_with_only_corrupt_files(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        (tmp_path / "images" / name / "1.png").write_bytes(b"not an image at all")
    config = write_config(tmp_path / "config.yaml", "image_classification", "images")
    assert_user_error(train(tmp_path, config), "images", "no readable images", "2 files skipped", ".png")


# ------------------------------------------------------------------------------------------ tables


def test_empty_csv(tmp_path):
    config = table_config(tmp_path)
    (tmp_path / "data.csv").write_text("")
    assert_user_error(train(tmp_path, config), "data.csv", "empty", "header row")


def test_csv_with_only_a_header(tmp_path):
    config = table_config(tmp_path)
    (tmp_path / "data.csv").write_text("x1,x2,color,label\n")
    assert_user_error(train(tmp_path, config), "data.csv", "no data rows")


def test_label_column_absent_suggests_the_closest_column(tmp_path):
    config = table_config(tmp_path, data={"label": "lable"})
    assert_user_error(train(tmp_path, config), "data.csv", "'lable' not found", "Did you mean 'label'?")


def test_class_with_too_few_examples_to_stratify_is_named(tmp_path):
    frame = pd.concat(
        [table_frame(), pd.DataFrame([{"x1": 9.0, "x2": 9.0, "color": "red", "label": "rare"}] * 2)]
    )
    config = table_config(tmp_path, frame)
    assert_user_error(train(tmp_path, config), "'rare' (2)", "too few examples", "data.split.stratify: false")


def test_missing_value_with_missing_error_names_row_and_column(tmp_path):
    frame = table_frame()
    frame.loc[3, "x1"] = np.nan
    config = table_config(tmp_path, frame, data={"missing": "error"})
    assert_user_error(train(tmp_path, config), "row 4 (line 5 of data.csv)", "column 'x1'", "data.missing")


def test_infinite_value_names_row_and_column(tmp_path):
    frame = table_frame()
    frame.loc[5, "x2"] = np.inf
    config = table_config(tmp_path, frame)
    assert_user_error(train(tmp_path, config), "row 6 (line 7 of data.csv)", "column 'x2'", "inf", "infinite")


def test_column_mostly_empty_names_the_column_and_the_limit(tmp_path):
    frame = table_frame()
    frame.loc[:39, "x2"] = np.nan  # 40 of 60 rows
    config = table_config(tmp_path, frame)
    assert_user_error(
        train(tmp_path, config), "column 'x2'", "67% empty", "max_missing_fraction=0.5", "data.drop: [x2]"
    )


# -------------------------------------------------------------------------- inputs to a trained model


@pytest.mark.slow
def test_predict_table_missing_a_feature_column(table_run, tmp_path):
    table_frame(per_class=1).drop(columns=["label", "x2"]).to_csv(tmp_path / "rows.csv", index=False)
    result = foundry("predict", table_run.path, "rows.csv", cwd=tmp_path, home=table_run.home)
    assert_user_error(result, "rows.csv", "'x2'", "absent")


@pytest.mark.slow
def test_predict_a_file_that_does_not_exist(table_run, tmp_path):
    result = foundry("predict", table_run.path, "nope.csv", cwd=tmp_path, home=table_run.home)
    assert_user_error(result, "nope.csv", "no such file")


@pytest.mark.slow
def test_predict_with_an_image_model_on_a_text_file(image_run, tmp_path):
    (tmp_path / "notes.txt").write_text("a shopping list, not a picture\n")
    result = foundry("predict", image_run.path, "notes.txt", cwd=tmp_path, home=image_run.home)
    assert_user_error(result, "notes.txt", "not a readable image")


@pytest.mark.slow
def test_evaluate_with_a_label_never_seen_in_training(table_run, tmp_path):
    frame = table_frame(per_class=3, seed=4)
    frame.loc[0, "label"] = "zebra"
    frame.to_csv(tmp_path / "other.csv", index=False)
    result = foundry("evaluate", table_run.path, "--data", "other.csv", cwd=tmp_path, home=table_run.home)
    assert_user_error(result, "'zebra'", "other.csv", "never seen in training", "a, b, c")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("value", "shown", "what"), [("inf", "inf", "infinite"), ("1e308", "1e+308", "too large")]
)
def test_predict_refuses_an_infinite_or_too_large_number_naming_row_and_column(
    table_run, tmp_path, value, shown, what
):
    """Not exit 0 with a NaN probability: the model computes in float32, where 1e308 is inf too."""
    rows = table_frame(per_class=1).drop(columns="label").astype({"x2": object})
    rows.loc[1, "x2"] = value
    rows.to_csv(tmp_path / "rows.csv", index=False)
    result = foundry("predict", table_run.path, "rows.csv", cwd=tmp_path, home=table_run.home)
    assert_user_error(result, "rows.csv", "row 2 (line 3 of rows.csv)", "column 'x2'", f"{shown} is {what}")


@pytest.mark.slow
def test_predict_ignores_the_label_and_dropped_columns_and_refuses_any_other(tmp_path):
    """One rule for `foundry predict` and the HTTP service (tasks/tabular.py encode_request)."""
    home = tmp_path / "runs"
    config = table_config(tmp_path, table_frame().assign(id=range(60)), data={"drop": ["id"]})
    assert_ok(train(tmp_path, config, "--run-dir", "run"))
    rows = table_frame(per_class=1, seed=2).assign(id=[7, 8, 9])  # as the training file: label and id too
    rows.to_csv(tmp_path / "same.csv", index=False)
    assert_ok(foundry("predict", "run", "same.csv", cwd=tmp_path, home=home))
    rows.assign(colour="red").to_csv(tmp_path / "extra.csv", index=False)
    result = foundry("predict", "run", "extra.csv", cwd=tmp_path, home=home)
    assert_user_error(result, "extra.csv", "'colour'", "Did you mean 'color'?", "it ignores: label, id")


@pytest.mark.slow
def test_evaluate_a_model_trained_on_a_builtin_table(tmp_path):
    """A built-in's labels are in column `target` of an evaluate --data file, or where --label says."""
    from sklearn.datasets import load_breast_cancer

    home = tmp_path / "runs"
    config = write_config(
        tmp_path / "bc.yaml", "tabular_classification", "builtin:breast_cancer", data={"label": None}
    )
    assert_ok(train(tmp_path, config, "--run-dir", "run"))
    bunch = load_breast_cancer()
    frame = pd.DataFrame(bunch.data[:40], columns=bunch.feature_names)
    frame["target"] = bunch.target_names[bunch.target[:40]]
    frame.to_csv(tmp_path / "new.csv", index=False)
    assert_ok(foundry("evaluate", "run", "--data", "new.csv", cwd=tmp_path, home=home))

    frame.rename(columns={"target": "diagnosis"}).to_csv(tmp_path / "renamed.csv", index=False)
    result = foundry("evaluate", "run", "--data", "renamed.csv", cwd=tmp_path, home=home)
    message = assert_user_error(result, "renamed.csv", "label column 'target' not found", "--label")
    assert "Did you mean" not in message  # 'worst area' is no near miss of 'target'
    labelled = foundry(
        "evaluate", "run", "--data", "renamed.csv", "--label", "diagnosis", cwd=tmp_path, home=home
    )
    assert_ok(labelled)


@pytest.mark.slow
def test_evaluate_on_data_missing_some_classes_averages_over_the_present_ones(table_run, tmp_path):
    # identical rows of class 'a': one prediction for all, so at least one of the 3 classes has neither
    # an example nor a prediction
    table_frame(per_class=4, labels=("a",)).iloc[[0] * 4].to_csv(tmp_path / "only_a.csv", index=False)
    result = foundry("evaluate", table_run.path, "--data", "only_a.csv", cwd=tmp_path, home=table_run.home)
    assert_ok(result)
    (folder,) = (table_run.path / "evaluations").glob("only_a-*")
    metrics = json.loads((folder / "metrics.json").read_text())["test"]
    present = [k for k, v in metrics["per_class"].items() if k not in metrics.get("absent_classes", [])]
    assert metrics["absent_classes"] and "a" not in metrics["absent_classes"]
    assert metrics["f1_macro"] == pytest.approx(np.mean([metrics["per_class"][k]["f1"] for k in present]))
    shown = one_line(result.stdout)
    assert f"{len(metrics['absent_classes'])} of 3 classes have no example and no prediction" in shown
    assert "macro averages are over the other" in shown
    assert "no example and no prediction" in (folder / "report.html").read_text()


def test_a_latin1_csv_names_the_line_and_byte_and_says_to_re_encode(tmp_path):
    config = table_config(tmp_path)
    text = (tmp_path / "data.csv").read_text().splitlines()
    text[4] = text[4].replace("red", "r\u00f6d").replace("green", "gr\u00fcn").replace("blue", "bl\u00e5")
    (tmp_path / "data.csv").write_bytes(("\n".join(text) + "\n").encode("latin-1"))
    message = assert_user_error(
        train(tmp_path, config), "data.csv", "row 4, line 5, byte", "not valid UTF-8", "iconv"
    )
    assert "quoting" not in message


def test_one_colour_image_among_grey_ones_is_converted_with_a_warning(tmp_path):
    write_image_folder(tmp_path / "images")
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(tmp_path / "images" / "dog" / "odd.png")
    config = write_config(tmp_path / "config.yaml", "image_classification", "images")
    result = train(tmp_path, config, "--run-dir", "run")
    assert_ok(result)
    assert "1 colour image(s) are converted to grey: dog/odd.png" in one_line(result.stderr)
    assert (
        json.loads((tmp_path / "run" / "model" / "model.json").read_text())["preprocessing"]["channels"] == 1
    )


@pytest.mark.slow
def test_evaluate_with_an_unseen_image_label_prints_it_plainly(image_run, tmp_path):
    write_image_folder(tmp_path / "other", per_class=2, classes=("cat", "zz"))
    result = foundry("evaluate", image_run.path, "--data", "other", cwd=tmp_path, home=image_run.home)
    message = assert_user_error(result, "label(s) 'zz' were never seen in training", "cat, dog")
    assert "np.str_" not in message


@pytest.mark.slow
def test_a_very_long_alias_gives_the_limit_and_is_not_echoed_back(table_run, tmp_path):
    result = foundry("models", "alias", table_run.id, "a" * 5000, cwd=tmp_path, home=table_run.home)
    message = assert_user_error(result, "5,000 characters long", "at most 80 characters")
    assert len(message) < 300
