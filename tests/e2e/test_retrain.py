"""The loop the product lives on: serve a champion, collect corrections, retrain, promote only a
better challenger, and have the running server pick the promotion up without a restart."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from e2e_helpers import Server, assert_ok, assert_user_error, foundry, table_frame, write_config

pytestmark = pytest.mark.slow


def champion_config(tmp_path):
    """Three classes told apart by x1/x2; the training data never has color 'blue'. Users then
    teach the model the rule it could not know: every blue item is class 'c'."""
    frame = table_frame(per_class=30)
    frame["color"] = frame["color"].replace("blue", "green")
    frame.to_csv(tmp_path / "items.csv", index=False)
    return write_config(
        tmp_path / "items.yaml",
        "tabular_classification",
        "items.csv",
        model={"hidden": [16]},
        train={"epochs": 40, "lr": 0.02, "precision": "fp32"},
    )


def test_feedback_trains_a_challenger_that_is_promoted_and_served_and_a_worse_one_is_refused(tmp_path):
    home = tmp_path / "runs"
    assert_ok(
        foundry("train", champion_config(tmp_path), "--run-dir", home / "champion", cwd=tmp_path, home=home)
    )
    assert_ok(foundry("models", "alias", "champion", "champion", cwd=tmp_path, home=home))  # run id -> alias
    assert_user_error(foundry("retrain", "champion", cwd=tmp_path, home=home), "no feedback stored")

    with (
        Server("champion", "--watch", "0.5", cwd=tmp_path, home=home) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert http.get("/v1/model").json()["version"] == "v1"
        blue = [{"x1": 3.0 * (i % 2), "x2": -float(i % 2), "color": "blue"} for i in range(16)]
        answer = http.post("/v1/predict", json={"inputs": blue}).json()
        assert sum(p["label"] != "c" for p in answer["predictions"]) >= 12  # the champion can't know the rule
        for i in range(len(blue)):
            stored = http.post(
                "/v1/feedback", json={"request_id": answer["request_id"], "index": i, "label": "c"}
            )
            assert stored.status_code == 201, stored.text

        better = foundry("retrain", "champion", "--promote", cwd=tmp_path, home=home)
        assert_ok(better)
        assert "promoted: champion -> v2" in better.stdout
        comparison = json.loads(next(home.glob("*-retrain-*/comparison.json")).read_text())
        assert comparison["examples"]["feedback"] >= 1 and comparison["examples"]["feedback_trained"] >= 8
        assert comparison["challenger"]["feedback"] > comparison["champion"]["feedback"]
        assert comparison["challenger"]["holdout"] >= comparison["champion"]["holdout"] - 0.05
        assert "<img" in (home / comparison["challenger"]["run"] / "comparison.html").read_text()

        deadline = time.monotonic() + 60  # the server watches its alias and swaps the model in
        while http.get("/v1/model").json()["version"] != "v2" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert http.get("/v1/model").json()["version"] == "v2"
        relearned = http.post("/v1/predict", json={"inputs": blue}).json()
        assert relearned["model_version"] == "v2"
        assert sum(p["label"] == "c" for p in relearned["predictions"]) >= 14

        worse = foundry(
            "retrain",
            "champion",
            "--promote",
            "--set",
            "train.epochs=1",
            "--set",
            "train.lr=0.00001",
            cwd=tmp_path,
            home=home,
        )
        assert_ok(worse)
        assert "kept champion = v2" in worse.stdout
        time.sleep(1.5)  # two watch periods: the alias did not move, so neither does the server
        assert http.get("/v1/model").json()["version"] == "v2"
        assert http.post("/v1/admin/reload").json() == {
            "reloaded": True,
            "model_version": "v2",
            "previous": "v2",
        }

    listed = foundry("models", "list", cwd=tmp_path, home=home)
    assert_ok(listed)
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if line.startswith("│ v")}
    assert "champion" in rows["v2"] and "challenger" in rows["v3"] and "v2" in rows["v3"]  # v3 came from v2
