"""The gbdt recipe's size-aware options (models/gbdt.py `size_aware`): a key the config leaves unset is
"auto" in the resolved config, marked as the recipe's, and becomes a value chosen from the training rows that
the run prints, records and packages; a key the user sets wins."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import modelfoundry as mf
from modelfoundry.config import load_config
from modelfoundry.errors import UserError
from modelfoundry.models.gbdt import size_aware


def table(path, rows: int = 300):
    """A table whose label is a threshold of one of two numbers, for gbdt to learn in a few rounds."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 2))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "label": np.where(x[:, 0] > 0.2, "yes", "no")})
    frame.to_csv(path, index=False)
    return {"source": str(path), "label": "label"}


def trained(tmp_path, model: dict) -> tuple[dict, dict, str]:
    """Train gbdt through `mf.train`; the run's metrics.json, model.json and the console's output."""
    data = table(tmp_path / "t.csv")
    console = Console(record=True, width=200, file=open("/dev/null", "w"))  # noqa: SIM115
    config = {"task": "tabular_classification", "data": data, "model": {"name": "gbdt", **model}}
    mf.train(config, ["model.n_estimators=30"], run_dir=tmp_path / "run", console=console)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    spec = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    return metrics, spec, console.export_text()


def most_leaves(run) -> int:
    """The most leaves of any tree in the run's packaged LightGBM model."""
    text = (run / "model" / "lightgbm.txt").read_text()
    return max(int(n) for n in re.findall(r"^num_leaves=(\d+)$", text, re.MULTILINE))


def test_the_size_aware_values_grow_trees_with_the_training_rows():
    small, large = size_aware(300), size_aware(30_000)
    assert small["num_leaves"] < large["num_leaves"]
    assert small["min_child_samples"] >= large["min_child_samples"]
    assert all(isinstance(v, int) and v >= 2 for v in (*small.values(), *large.values()))


def test_an_unset_key_takes_the_size_aware_value_which_the_run_prints_records_and_packages(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    cfg, _ = load_config(
        {"task": "tabular_classification", "data": table(tmp_path / "t.csv"), "model": {"name": "gbdt"}}
    )
    assert cfg.model.model_extra["num_leaves"] == "auto"  # the resolved config says it is the recipe's
    assert cfg.recipe["model.num_leaves"] == cfg.recipe["model.min_child_samples"] == "gbdt recipe"

    metrics, spec, printed = trained(tmp_path, {})
    expected = size_aware(210)  # 300 rows: 70% train
    chosen = f"num_leaves {expected['num_leaves']}, min_child_samples {expected['min_child_samples']}"
    assert f"chosen: gbdt {chosen}: for 210 training rows" in printed
    assert any(chosen in line for line in metrics["recipe"]["chosen"])
    options = spec["model"]["options"]
    assert (options["num_leaves"], options["min_child_samples"]) == (
        expected["num_leaves"],
        expected["min_child_samples"],
    )
    assert most_leaves(tmp_path / "run") <= expected["num_leaves"]
    predictor = mf.load(tmp_path / "run")  # the package loads without "auto" anywhere
    assert predictor.predict([{"a": 2.0, "b": 0.0}, {"a": -2.0, "b": 0.0}]) == ["yes", "no"]


def test_a_key_the_user_sets_wins_over_the_size_aware_value(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    metrics, spec, printed = trained(tmp_path, {"num_leaves": 3})
    assert spec["model"]["options"]["num_leaves"] == 3
    assert most_leaves(tmp_path / "run") <= 3
    line = next(line for line in printed.splitlines() if line.startswith("chosen: gbdt"))
    assert "num_leaves" not in line and "min_child_samples" in line  # only the unset key was chosen
    assert "model.num_leaves" not in metrics["recipe"]["from"]


def test_a_bad_value_for_a_size_aware_option_names_the_key_the_value_and_what_is_allowed(tmp_path):
    config = {
        "task": "tabular_classification",
        "data": table(tmp_path / "t.csv"),
        "model": {"name": "gbdt", "num_leaves": "many", "min_child_samples": 0},
    }
    with pytest.raises(UserError) as info:
        load_config(config)
    message = str(info.value)  # both problems at once
    assert "model.num_leaves: 'many' must be a whole number, 2 or more or one of 'auto'" in message
    assert "model.min_child_samples: 0 must be a positive whole number or one of 'auto'" in message
