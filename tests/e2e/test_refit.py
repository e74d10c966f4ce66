"""`train.refit`: the model trained again on train+val for as long as early stopping kept the first one,
through the real CLI on a tiny table. On by default for model.name auto (tests/e2e/test_gbdt.py); here named
with a gbdt, whose rounds make the length visible."""

from __future__ import annotations

import json

import lightgbm
import yaml

from e2e_helpers import assert_ok, assert_user_error, foundry, table_frame, write_config, write_table

TREES = {"name": "gbdt", "n_estimators": 300, "learning_rate": 0.3, "min_child_samples": 3, "num_leaves": 4}


def _config(folder, **train):
    config = write_config(folder / "trees.yaml", "tabular_classification", "train.csv", train=train)
    text = yaml.safe_load(config.read_text())
    text["model"] = TREES
    config.write_text(yaml.safe_dump(text))
    return config


def test_refit_boosts_the_best_round_again_on_train_and_val_and_keeps_the_first_models_val_numbers(tmp_path):
    write_table(tmp_path / "train.csv", table_frame(per_class=40))
    config = _config(tmp_path, early_stopping_patience=10)
    runs = {}
    for refit in ("true", "false"):
        run = ("--set", f"train.refit={refit}", "--run-dir", tmp_path / refit)
        result = foundry("train", config, *run, cwd=tmp_path, home=tmp_path / "h")
        assert_ok(result)
        runs[refit] = json.loads((tmp_path / refit / "metrics.json").read_text())
    again, once = runs["true"], runs["false"]
    splits = json.loads((tmp_path / "true" / "data_report.json").read_text())["splits"]
    best = again["best_epoch"]
    assert again["refit"]["examples"] == splits["train"] + splits["val"]
    assert "refit" not in once
    # the first model is the same in both runs, and the validation numbers are its
    assert again["val"]["loss"] == once["val"]["loss"] and again["best_epoch"] == once["best_epoch"]
    # the shipped booster has exactly the best round's trees, boosted on train+val
    booster = lightgbm.Booster(model_file=str(tmp_path / "true" / "model" / "lightgbm.txt"))
    assert booster.current_iteration() == best < TREES["n_estimators"]
    spec = json.loads((tmp_path / "true" / "model" / "model.json").read_text())
    assert (
        spec["model"]["options"]["n_estimators"] == best
        and spec["refit"]["examples"] == again["refit"]["examples"]
    )
    report = (tmp_path / "true" / "report.html").read_text()
    assert (
        f"trained again on train+val ({splits['train']} + {splits['val']} examples) for {best} rounds"
        in report
    )
    # the saved config retrains the same way
    assert yaml.safe_load((tmp_path / "true" / "config.yaml").read_text())["train"]["refit"] is True


def test_refit_true_without_a_validation_split_exits_2_saying_why(tmp_path):
    write_table(tmp_path / "train.csv")
    config = _config(tmp_path, refit=True)
    text = yaml.safe_load(config.read_text())
    text["data"]["split"] = {"val": 0}
    config.write_text(yaml.safe_dump(text))
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "h"),
        "train.refit: true trains the model again on train+val",
        "data.split.val is 0: there is no validation split. Set data.split.val above 0",
    )


def test_a_refitted_member_is_not_weighed_on_the_validation_split_it_trained_on(tmp_path):
    write_table(tmp_path / "train.csv")
    home = tmp_path / "h"
    for name, refit in (("a", "true"), ("b", "false")):
        run = ("--set", f"train.refit={refit}", "--run-dir", tmp_path / name)
        assert_ok(foundry("train", _config(tmp_path), *run, cwd=tmp_path, home=home))
    assert_user_error(
        foundry("ensemble", tmp_path / "a", tmp_path / "b", "--method", "weighted", cwd=tmp_path, home=home),
        "a was trained again on train+val (train.refit",
        "Use --method mean",
    )
    assert_ok(
        foundry("ensemble", tmp_path / "a", tmp_path / "b", "--method", "mean", cwd=tmp_path, home=home)
    )
