"""`foundry tune` through the real CLI on a tiny table: a study writes the best config, trains it as a
registered run and reports; a second call resumes the same study; bad spaces and flags exit 2."""

from __future__ import annotations

import pytest
import yaml

from e2e_helpers import assert_ok, assert_user_error, foundry, write_config, write_table

pytestmark = pytest.mark.slow

# 1-3 epochs of an 8-unit MLP: each trial takes a fraction of a second; the CLI's imports dominate.
SPACE = {
    "train.lr": {"loguniform": [1.0e-3, 1.0e-1]},
    "train.epochs": {"int": [1, 3]},
    "model.hidden": {"choice": [[8], [8, 8]]},
}


def tune_config(tmp_path, space=None, **tune):
    write_table(tmp_path / "train.csv")
    return write_config(
        tmp_path / "table.yaml",
        "tabular_classification",
        "train.csv",
        train={"epochs": 2, "precision": "fp32"},
        tune={"space": space or SPACE, **tune},
    )


def tune(tmp_path, *args):
    return foundry("tune", *args, cwd=tmp_path, home=tmp_path / "runs")


def test_tune_writes_the_best_config_trains_it_as_a_registered_run_and_reports(tmp_path):
    result = tune(tmp_path, tune_config(tmp_path), "--trials", "3")
    assert_ok(result)
    assert result.stderr.count("trial ") >= 3 and "[3/3]" in result.stderr  # one progress line per trial
    assert "best trials" in result.stdout

    folder = tmp_path / "runs" / "tune" / "table"  # the study is named after the config file
    best = yaml.safe_load((folder / "best_config.yaml").read_text())
    assert "tune" not in best and best["name"] == "table-best"
    assert {"lr", "epochs"} <= set(best["train"]) and best["model"]["hidden"] in ([8], [8, 8])

    # best_config.yaml names its data by absolute path, so it trains from any folder.
    assert best["data"]["source"] == str((tmp_path / "train.csv").resolve())

    assert "registered model version v1" in result.stderr
    run_line = next(line for line in result.stdout.splitlines() if line.startswith("run:"))
    assert "-table-best-" in run_line and "test accuracy" in run_line
    (run,) = (tmp_path / "runs").glob("*-table-best-*")
    assert (run / "model" / "model.json").is_file() and (run / "report.html").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == best["train"]["lr"]

    report = (folder / "tune_report.html").read_text()
    assert "<img" in report and "data:image/png;base64," in report and "Optimisation history" in report


def test_a_second_call_with_the_same_storage_resumes_the_study(tmp_path):
    import optuna

    config, storage = tune_config(tmp_path), f"sqlite:///{tmp_path / 'study.db'}"
    for _ in range(2):
        result = tune(
            tmp_path, config, "--trials", "2", "--storage", storage, "--study", "resumed", "--no-train"
        )
        assert_ok(result)
    assert "2 trial(s) so far; running 2 more" in result.stderr
    assert "4 trials (2 run now)" in result.stdout
    study = optuna.load_study(study_name="resumed", storage=storage)
    assert len(study.trials) == 4
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4, (
        "resuming must not replay proposals"
    )
    assert not list((tmp_path / "runs").glob("*-table-best-*")), "--no-train trains nothing"


def test_unknown_key_in_the_space(tmp_path):
    config = tune_config(tmp_path, {"train.lrr": {"loguniform": [1.0e-3, 1.0e-1]}})
    assert_user_error(
        tune(tmp_path, config),
        "table.yaml",
        "tune.space.train.lrr: not a config key",
        "Did you mean 'train.lr'?",
    )


def test_empty_range_in_the_space(tmp_path):
    config = tune_config(tmp_path, {"train.lr": {"loguniform": [1.0e-2, 1.0e-4]}})
    assert_user_error(
        tune(tmp_path, config),
        "tune.space.train.lr",
        "[0.01, 0.0001] is an empty range",
        "low to high: [0.0001, 0.01]",
    )


def test_worker_without_storage(tmp_path):
    assert_user_error(tune(tmp_path, tune_config(tmp_path), "--worker"), "--worker", "needs --storage URL")


def test_tune_of_a_regression_model_minimises_val_rmse_and_reports_the_test_rmse(tmp_path):
    from test_regression import price_frame

    price_frame(rows=120).to_csv(tmp_path / "prices.csv", index=False)
    config = write_config(
        tmp_path / "prices.yaml",
        "tabular_regression",
        "prices.csv",
        data={"label": "price"},
        train={"epochs": 3, "precision": "fp32"},
        tune={"space": {"train.lr": {"loguniform": [1.0e-3, 1.0e-1]}}},
    )
    result = tune(tmp_path, config, "--trials", "3")
    assert_ok(result)
    assert "val_rmse" in result.stderr  # each trial line names the metric it is scored by
    run_line = next(line for line in result.stdout.splitlines() if line.startswith("run:"))
    assert "test rmse" in run_line
    report = (tmp_path / "runs" / "tune" / "prices" / "tune_report.html").read_text()
    assert "best val_rmse" in report and "test rmse of the best config" in report
