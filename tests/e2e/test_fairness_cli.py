"""The fairness audit through the real CLI: a run audits its test split per group of columns the model
may not even see, `foundry evaluate --data` audits new data alike, and a bad column is one message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from e2e_helpers import TINY_MLP, assert_ok, assert_user_error, foundry, write_config

REVIEWS = Path(__file__).parents[2] / "examples" / "tiny" / "reviews.csv"


def people_frame(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """A label that x1 and sex decide; race is left out of the model (data.drop) and still audited."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=rows).round(3),
            "x2": rng.normal(size=rows).round(3),
            "sex": rng.choice(["F", "M"], rows, p=[0.4, 0.6]),
            "race": rng.choice(["A", "B", "C"], rows, p=[0.55, 0.35, 0.1]),
            "id": range(rows),
        }
    )
    noise = rng.normal(0, 0.7, rows)
    frame["label"] = np.where(frame["x1"] + (frame["sex"] == "M") + noise > 0.5, "yes", "no")
    return frame


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fairness")
    home = folder / "runs"
    people_frame().to_csv(folder / "people.csv", index=False)
    config = write_config(
        folder / "people.yaml",
        "tabular_classification",
        "people.csv",
        data={"drop": ["id", "race"]},
        evaluate={"sensitive": ["sex", "race"], "intersections": True},
    )
    result = foundry("train", config, *TINY_MLP, *EPOCHS, "--run-dir", home / "people", cwd=folder, home=home)
    assert_ok(result)
    return folder, home, home / "people", result


EPOCHS = ["--set", "train.epochs=20"]  # enough for the model to lean on sex; a second on a tiny table


def test_a_run_audits_its_test_split_per_group_in_metrics_and_report(audited_run):
    _folder, _home, run, result = audited_run
    fairness = json.loads((run / "metrics.json").read_text())["fairness"]
    assert set(fairness["attributes"]) == {"sex", "race", "sex & race"}
    sex = fairness["attributes"]["sex"]
    assert set(sex["groups"]) == {"F", "M"} and sum(g["n"] for g in sex["groups"].values()) == 80  # 20% test
    assert {"demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference"} <= set(
        sex["gaps"]
    )
    race = fairness["attributes"]["race"]
    assert race["unreliable_groups"]  # ~6 test rows of race C: reported, flagged, no error
    columns = [
        c["name"] for c in json.loads((run / "model" / "model.json").read_text())["preprocessing"]["columns"]
    ]
    assert "race" not in columns and "sex" in columns  # audited without being fed to the model
    assert "fewer than 30 examples here" in result.stderr  # said as a warning, not an error
    report = (run / "report.html").read_text()
    assert 'id="fairness"' in report and "demographic parity difference" in report
    # global explanation: each column the model reads, by name, x1 and sex (which decide the label) first
    importance = json.loads((run / "metrics.json").read_text())["importance"]
    assert importance["metric"] == "accuracy" and importance["rows"] == 80
    assert list(importance["columns"])[-1] == "x2" and set(importance["columns"]) == {"x1", "x2", "sex"}
    assert 'id="importance"' in report
    assert report.count("numbers per group") == 3  # a bar chart of every number for each column


def test_evaluate_on_new_data_audits_its_groups_and_names_a_missing_column(audited_run):
    folder, home, run, _ = audited_run
    people_frame(120, seed=1).to_csv(folder / "new.csv", index=False)
    result = foundry("evaluate", run, "--data", "new.csv", "--json", cwd=folder, home=home)
    assert_ok(result)
    fairness = json.loads(result.stdout)["metrics"]["fairness"]
    assert sum(g["n"] for g in fairness["attributes"]["race"]["groups"].values()) == 120
    people_frame(50, seed=2).drop(columns=["race"]).rename(columns={"sex": "gender"}).to_csv(
        folder / "no_sex.csv", index=False
    )
    bad = foundry("evaluate", run, "--data", "no_sex.csv", cwd=folder, home=home)
    assert_user_error(bad, "no_sex.csv has no column 'sex'", "Its columns: x1, x2, gender, id, label")


def test_a_sensitive_column_that_is_not_there_stops_training_with_the_close_name(tmp_path):
    people_frame(60).to_csv(tmp_path / "people.csv", index=False)
    config = write_config(
        tmp_path / "c.yaml", "tabular_classification", "people.csv", evaluate={"sensitive": ["sexe"]}
    )
    result = foundry("train", config, cwd=tmp_path, home=tmp_path / "runs")
    assert_user_error(result, "evaluate.sensitive:", "has no column 'sexe'. Did you mean 'sex'?")


def test_balance_groups_narrows_the_gap_it_was_asked_to(audited_run):
    folder, home, run, _ = audited_run
    balanced = foundry(
        "train",
        folder / "people.yaml",
        *TINY_MLP,
        *EPOCHS,
        "--set",
        "train.balance_groups=sex",
        "--run-dir",
        home / "balanced",
        cwd=folder,
        home=home,
    )
    assert_ok(balanced)
    assert "balance_groups: sex: 4 (group / label) cells, equal_cells" in balanced.stderr
    before = json.loads((run / "metrics.json").read_text())
    after = json.loads((home / "balanced" / "metrics.json").read_text())
    assert after["balance_groups"]["cells"].keys() == {"F / no", "F / yes", "M / no", "M / yes"}
    gap = "demographic_parity_difference"
    sex_before, sex_after = before["fairness"]["attributes"]["sex"], after["fairness"]["attributes"]["sex"]
    assert sex_after["gaps"][gap] < sex_before["gaps"][gap] - 0.1, (sex_before["gaps"], sex_after["gaps"])


def test_a_text_model_is_audited_on_a_column_it_never_reads(tmp_path):
    """Each review's region is its label's twin, so each region's accuracy must equal its class's recall:
    it does only if the groups follow the test texts through the split and the length sorting (an
    imperfect model, so that mixed-up groups would score otherwise)."""
    reviews = pd.read_csv(REVIEWS)
    reviews["region"] = np.where(reviews["sentiment"] == "positive", "north", "south")
    reviews.to_csv(tmp_path / "reviews.csv", index=False)
    config = write_config(
        tmp_path / "text.yaml",
        "text_classification",
        "reviews.csv",
        data={"text": "review", "label": "sentiment", "split": {"val": 0.2, "test": 0.3, "seed": 0}},
        model={"name": "lstm", "embed_dim": 16, "hidden": 16},
        train={
            "epochs": 1,
            "batch_size": 16,
            "precision": "fp32",
        },  # far from perfect: wrong groups would show
        evaluate={"sensitive": ["region"]},
    )
    home = tmp_path / "runs"
    assert_ok(foundry("train", config, "--run-dir", home / "text", cwd=tmp_path, home=home))
    metrics = json.loads((home / "text" / "metrics.json").read_text())
    groups = metrics["fairness"]["attributes"]["region"]["groups"]
    per_class = metrics["test"]["per_class"]
    assert groups["north"]["accuracy"] == pytest.approx(per_class["positive"]["recall"])
    assert groups["south"]["accuracy"] == pytest.approx(per_class["negative"]["recall"])
    assert groups["north"]["n"] == per_class["positive"]["support"]
    result = foundry("evaluate", home / "text", "--data", "reviews.csv", "--json", cwd=tmp_path, home=home)
    assert_ok(result)
    new = json.loads(result.stdout)["metrics"]["fairness"]["attributes"]["region"]["groups"]
    assert new["north"]["n"] == int((reviews["region"] == "north").sum())


def test_gbdt_trees_take_the_balance_weights(tmp_path, monkeypatch):
    """In process (no CLI): LightGBM boosts on the weighted rows, and the parity gap narrows."""
    from rich.console import Console

    import modelfoundry as mf

    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    people_frame().to_csv(tmp_path / "people.csv", index=False)
    config = {
        "task": "tabular_classification",
        "data": {"source": str(tmp_path / "people.csv"), "label": "label", "drop": ["id", "race"]},
        "model": {"name": "gbdt", "n_estimators": 30},
        "evaluate": {"sensitive": ["sex"]},
    }
    gaps = {}
    for method in (None, "reweighing"):
        extra = ["train.balance_groups=sex", f"train.balance_method={method}"] if method else []
        run = mf.train(config, extra, run_dir=tmp_path / str(method), console=Console(quiet=True))
        gaps[method] = run.metrics["fairness"]["attributes"]["sex"]["gaps"]["demographic_parity_difference"]
    assert run.metrics["balance_groups"]["method"] == "reweighing"
    assert gaps["reweighing"] < gaps[None] - 0.05, gaps
