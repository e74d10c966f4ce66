"""`--json` on the commands scripts read: one JSON document on stdout and nothing else there (progress
and notes go to stderr). Most run in this process through typer's runner (the real commands, without a
second torch import); `predict` runs as its own process, as a script would call it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from e2e_helpers import assert_ok, foundry, table_frame
from modelfoundry.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(monkeypatch, table_run):
    """`cli(*args)` -> the parsed JSON stdout of `foundry ARGS` over the table runs' registry."""
    monkeypatch.setenv("FOUNDRY_HOME", str(table_run.home))
    monkeypatch.delenv("FOUNDRY_DB", raising=False)

    def run(*args) -> dict | list:
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)  # fails unless stdout is exactly one JSON document

    return run


def test_evaluate_json_gives_the_runs_metrics_and_with_data_the_new_datas(cli, table_run, tmp_path):
    stored = cli("evaluate", table_run.path, "--json")
    assert stored["metrics"]["test"]["accuracy"] == pytest.approx(
        json.loads((table_run.path / "metrics.json").read_text())["test"]["accuracy"]
    )
    assert stored["report"].endswith("report.html")
    # 60 rows, 12 of them for testing: the reviewer's note is in metrics.json, the report and train's stderr
    (small,) = [w for w in stored["metrics"]["warnings"] if w.startswith("the test set has only 12 examples")]
    assert small in " ".join(table_run.train_stderr.split())
    assert "Before trusting these numbers" in (table_run.path / "report.html").read_text()

    table_frame(per_class=5, seed=7).to_csv(data := tmp_path / "new.csv", index=False)
    fresh = cli("evaluate", table_run.path, "--data", data, "--json")
    assert fresh["metrics"]["test"]["n"] == 15
    assert set(fresh["metrics"]["test"]["per_class"]) == {"a", "b", "c"}
    assert fresh["metrics"]["data"] == str(data)


def test_runs_and_models_json_list_show_and_compare(cli, table_run, table_run_lr):
    runs = {r["id"]: r for r in cli("runs", "list", "--json")}
    assert {table_run.id, table_run_lr.id} <= set(runs)
    assert runs[table_run.id]["status"] == "completed"
    shown = cli("runs", "show", table_run.id, "--json")
    assert shown["id"] == table_run.id and shown["metrics"] == runs[table_run.id]["metrics"]
    compared = cli("runs", "compare", table_run.id, table_run_lr.id, "--json")
    assert compared["runs"] == [table_run.id, table_run_lr.id]
    assert compared["config"]["train.lr"] == [0.01, 0.003]  # only the keys that differ
    assert "train.epochs" not in compared["config"]
    assert len(compared["metrics"]["test_accuracy"]) == 2

    versions = cli("models", "list", "--json")
    assert {v["run_id"] for v in versions} >= {table_run.id, table_run_lr.id}
    assert all(v["version"].startswith("v") and isinstance(v["aliases"], list) for v in versions)


def test_compress_json_gives_the_trade_off_table(cli, table_run):
    document = cli("compress", table_run.path, "--json")
    assert document["made"] == {}  # nothing asked for: the original alone is measured
    (row,) = document["tradeoff"]["rows"]
    assert row["model"] and row["parameters"] > 0 and row["batch1_p50_ms"] > 0
    assert [c[0] for c in document["tradeoff"]["quality"]["columns"]] == ["accuracy", "f1_macro", "agreement"]
    assert document["report"].endswith("compression.html")


def test_predict_json_prints_only_json_on_stdout_in_a_real_process(table_run, tmp_path):
    table_frame(per_class=4, seed=5).to_csv(rows := tmp_path / "rows.csv", index=False)
    result = foundry(
        "predict",
        table_run.path,
        rows,
        "--top-k",
        "2",
        "--json",
        "-o",
        tmp_path / "out.csv",
        cwd=tmp_path,
        home=table_run.home,
    )
    assert_ok(result)
    predictions = json.loads(result.stdout)["predictions"]
    assert [p["input"] for p in predictions] == [str(i) for i in range(1, 13)]
    assert all(p["label"] in "abc" and len(p["top_k"]) == 2 for p in predictions)
    assert "wrote 12 predictions" in result.stderr  # the note goes to stderr, stdout stays JSON
