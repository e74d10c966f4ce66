"""Recommendation through the real CLI: train on a tiny interaction file, then predict, evaluate new
interactions, serve recommendations and similar items."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import modelfoundry as mf
from e2e_helpers import assert_ok, foundry, one_line
from modelfoundry.cli import app
from modelfoundry.errors import UserError


def interaction_frame(users: int = 60, items: int = 40, per_user: int = 12, seed: int = 0) -> pd.DataFrame:
    """Users and items in 4 taste groups: 80% of each user's interactions are items of their group."""
    rng = np.random.default_rng(seed)
    user_group, item_group = rng.integers(0, 4, users), np.arange(items) % 4
    rows, time = [], 0
    for u in range(users):
        for _ in range(per_user):
            pool = np.flatnonzero(item_group == user_group[u]) if rng.random() < 0.8 else np.arange(items)
            time += 1
            rows.append((f"u{u}", f"i{rng.choice(pool)}", int(rng.integers(1, 6)), time))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts"])


@pytest.fixture(scope="module")
def rec_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recommendation")
    home = folder / "runs"
    frame = interaction_frame(per_user=15)  # the first 12 of each user to train on, 3 that come later
    order = frame.groupby("user_id").cumcount()
    frame[order < 12].to_csv(folder / "inter.csv", index=False)
    later = pd.concat(
        [frame[order >= 12], pd.DataFrame([("stranger", "i1", 5, 10**6)], columns=frame.columns)]
    )
    later.to_csv(folder / "later.csv", index=False)
    titles = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(41)], "title": [f"Film {i}" for i in range(41)]}
    )
    titles.to_csv(folder / "items.csv", index=False)  # i40 has no interaction: counted
    config = folder / "rec.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "recommendation",
                "data": {
                    "source": "inter.csv",
                    "user": "user_id",
                    "item": "item_id",
                    "timestamp": "ts",
                    "items": "items.csv",
                },
                "model": {"name": "mf", "dim": 16},
                "train": {"epochs": 20, "batch_size": 64, "lr": 0.02},
            }
        )
    )
    result = foundry("train", config, "--run-dir", home / "rec", cwd=folder, home=home)
    assert_ok(result)
    return SimpleNamespace(folder=folder, home=home, path=home / "rec", result=result)


def test_mf_learns_the_taste_groups_and_beats_the_popularity_baseline_shown_beside_it(rec_run):
    run, result = rec_run.path, rec_run.result
    assert "test ndcg@10" in result.stdout and "test ndcg@10 of popularity" in result.stdout
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert {"ndcg@10", "recall@20", "hitrate@10", "mrr", "coverage@10", "popularity_bias@10"} <= set(test)
    assert test["users"] == 60  # each user's last interaction, ranked against every unseen item
    assert test["ndcg@10"] > test["popularity"]["ndcg@10"] + 0.1
    report = json.loads((run / "data_report.json").read_text())
    assert report["splits"]["test"] == 60 and report["duplicate_pairs"] > 0
    assert report["cold_start"]["test"] == {"items": 0, "users": 0}
    assert report["items_table"] == {"rows": 41, "without_interactions": 1}


def test_the_report_compares_with_popularity_per_activity_and_shows_example_users_with_titles(rec_run):
    page = (rec_run.path / "report.html").read_text()
    assert "Ranking metrics against popularity" in page and "popularity_bias@10" in page
    assert "By user activity" in page and "items before" in page
    assert page.count("<h3>user ") == 5 and "held out: " in page and "(Film " in page


def test_predict_recommends_unseen_items_and_says_when_a_user_is_new(rec_run):
    run = rec_run.path
    seen = set(pd.read_csv(rec_run.folder / "inter.csv").query("user_id == 'u3'")["item_id"])
    answers = mf.load(run).recommend(["u3", "nobody"], k=5)
    assert len(answers[0]["items"]) == 5 and not {i["item"] for i in answers[0]["items"]} & seen
    assert answers[1]["cold_start"] and "cold start" in answers[1]["note"]
    result = foundry("predict", run, "--user", "nobody", "--k", "3", cwd=rec_run.folder, home=rec_run.home)
    assert_ok(result)
    assert "new to the model (cold start)" in result.stderr and len(result.stdout.splitlines()) == 4
    # the same command in this process (no torch import per call): the CLI exits 2 on a UserError
    for args, message in (
        (["u3"], "foundry predict RUN --user u3 --k 10"),
        (["--user", "u3", "--k", "0"], "k: 0 must be a whole number from 1 to 40"),  # 40 items
        (["--user", "u3", "--k", "41"], "k: 41 must be a whole number from 1 to 40"),
    ):
        outcome = CliRunner().invoke(app, ["predict", str(run), *args])
        assert isinstance(outcome.exception, UserError) and message in str(outcome.exception)


def test_evaluate_ranks_later_interactions_against_everything_the_user_has_not_seen(rec_run):
    result = foundry(
        "evaluate", rec_run.path, "--data", "later.csv", "--json", cwd=rec_run.folder, home=rec_run.home
    )
    assert_ok(result)
    test = json.loads(result.stdout)["metrics"]["test"]
    assert test["new_users"] == 1  # "stranger" cannot be ranked for; counted
    assert 0 < test["users"] <= 60 and test["ndcg@10"] > test["popularity"]["ndcg@10"]


def test_the_service_recommends_finds_similar_items_and_refuses_a_bad_k(rec_run, client_for):
    client = client_for(rec_run)
    answer = client.post("/v1/recommend", json={"user": "u3", "k": 4}).json()
    assert answer["user"] == "u3" and len(answer["items"]) == 4 and not answer["cold_start"]
    cold = client.post("/v1/recommend", json={"user": "someone new", "k": 2}).json()
    assert cold["cold_start"] and "most popular" in cold["note"]
    for k in (0, 1000):
        bad = client.post("/v1/recommend", json={"user": "u3", "k": k})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "k"
    similar = client.post("/v1/similar", json={"item": "i1", "k": 3}).json()
    assert len(similar["items"]) == 3 and "i1" not in {i["item"] for i in similar["items"]}
    wrong_route = client.post("/v1/predict", json={"inputs": ["u3"]})
    assert wrong_route.status_code == 422 and "/v1/recommend" in wrong_route.json()["error"]["message"]
    unknown = client.post("/v1/similar", json={"item": "i999"})
    assert unknown.status_code == 404 and "not an item of this model" in unknown.json()["error"]["message"]


def test_clicks_and_likes_are_stored_as_interactions_and_retrain_compares_on_the_frozen_test_split(
    rec_run, client_for
):
    client = client_for(rec_run)
    for n in range(8):
        sent = client.post(
            "/v1/feedback", json={"input": {"user": f"u{n}", "item": f"i{n}"}, "label": "like"}
        )
        assert sent.status_code == 201, sent.text
    bad = client.post("/v1/feedback", json={"input": {"user": "u1", "item": "i999"}, "label": "like"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "input.item"
    wrong = client.post("/v1/feedback", json={"input": {"user": "u1", "item": "i1"}, "label": "stars"})
    assert wrong.status_code == 422 and "click, like" in wrong.json()["error"]["message"]
    assert_ok(foundry("models", "alias", "rec", "champion", cwd=rec_run.folder, home=rec_run.home))
    result = foundry("retrain", "champion", cwd=rec_run.folder, home=rec_run.home)
    assert_ok(result)
    assert "holdout ndcg@10 (60)" in one_line(result.stdout)
    report = Path(one_line(result.stdout).split("report: ")[1].split()[0])
    comparison = json.loads(report.with_name("comparison.json").read_text())
    assert comparison["metric"] == "ndcg@10" and comparison["examples"]["holdout"] == 60
    assert comparison["examples"]["feedback_trained"] + comparison["examples"]["feedback"] == 8
    assert comparison["promoted"] is False  # without --promote only the comparison is made
    assert 0 < comparison["champion"]["holdout"] < 1 and 0 < comparison["challenger"]["holdout"] < 1


def test_the_scoring_model_exports_to_onnx_and_recommends_the_same_items(rec_run):
    from modelfoundry.compress.onnx_export import export_onnx

    record = export_onnx(rec_run.path)
    assert record["parity"]["max_abs_probability_difference"] < 1e-4
    torch_answer = mf.load(rec_run.path, backend="torch").recommend("u5", k=5)[0]["items"]
    onnx_answer = mf.load(rec_run.path, backend="onnx").recommend("u5", k=5)[0]["items"]
    assert [i["item"] for i in onnx_answer] == [i["item"] for i in torch_answer]
