"""Recommendation: reading and checking interactions, the per-user split, full-ranking metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from modelfoundry.config import load_config
from modelfoundry.data.prepare import prepare
from modelfoundry.errors import UserError
from modelfoundry.evaluate.ranking import ItemSets, ranking_metrics
from modelfoundry.tasks.recommendation import split_per_user


def config(source, **data):
    raw = {
        "task": "recommendation",
        "data": {"source": str(source), "user": "user_id", "item": "item_id", **data},
    }
    return load_config(raw)


def interactions(path, rows):
    pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "ts"]).to_csv(path, index=False)
    return path


def test_full_ranking_metrics_match_a_hand_count_and_skip_training_items():
    # 2 users, 5 items; user 0's relevant item 3 ranks 2nd once item 0 (seen in training) is excluded
    scores = torch.tensor([[9.0, 1.0, 5.0, 4.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    relevant = ItemSets.from_pairs(np.array([0, 1]), np.array([3, 0]), 2)
    exclude = ItemSets.from_pairs(np.array([0]), np.array([0]), 2)
    out = ranking_metrics(scores, relevant, exclude, [1, 2], popularity=np.array([5, 4, 3, 2, 1]))
    assert out["hitrate@2"] == 0.5 and out["recall@1"] == 0.0
    assert out["ndcg@2"] == pytest.approx((1 / math.log2(3)) / 2)
    assert out["mrr"] == pytest.approx((1 / 2 + 1 / 5) / 2)  # user 1's item 0 ranks last of 5
    assert out["coverage@1"] == pytest.approx(2 / 5)  # items 2 and 4 were recommended first
    assert out["users"] == 2


def test_each_users_last_interaction_is_test_and_the_one_before_validation():
    users = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    times = np.array([4.0, 1, 3, 2, 1, 2, 9, 8, 7])
    part = split_per_user(users, times, val=True, test=True, seed=0)
    assert part.tolist() == [2, 0, 1, 0, 0, 0, 2, 1, 0]  # user 1 has too few to hold any out


def test_the_data_report_counts_duplicates_dropped_users_and_the_threshold(tmp_path):
    rows = [(f"u{u}", f"i{i}", 5 if i % 2 else 1, u * 10 + i) for u in range(6) for i in range(6)]
    rows += [("u0", "i1", 5, 99), ("lonely", "i1", 5, 100)]
    cfg, base = config(
        interactions(tmp_path / "r.csv", rows),
        rating="rating",
        implicit_threshold=4,
        timestamp="ts",
        min_interactions=2,
    )
    data = prepare(cfg, base)
    report = data.report
    assert report["below_threshold"] == 18 and report["duplicate_pairs"] == 1
    assert report["too_few_interactions"]["users"] == 1  # "lonely"
    assert report["splits"] == {"train": 6, "val": 6, "test": 6}
    assert data.labels == ["i1", "i3", "i5"] and data.input_shape == (6, 0, 0)


@pytest.mark.parametrize(
    ("data", "rows", "phrases"),
    [
        ({"user": "userid"}, None, ["data.user column 'userid' not found", "Did you mean 'user_id'"]),
        (
            {"rating": "rating"},
            [("u1", "i1", "five", 1)],
            ["row 1 (line 2 of r.csv)", "'five' is not a number"],
        ),
        ({}, [("u1", "i1", 1, 1), ("", "i2", 1, 2)], ["row 2", "the user id is empty"]),
        ({"timestamp": "ts"}, [("u1", "i1", 1, "soon")], ["timestamp column 'ts'", "'soon' is neither"]),
    ],
)
def test_bad_interactions_name_the_row_column_and_fix(tmp_path, data, rows, phrases):
    cfg, base = config(interactions(tmp_path / "r.csv", rows or [("u1", "i1", 1, 1)]), **data)
    with pytest.raises(UserError) as info:
        prepare(cfg, base)
    for phrase in phrases:
        assert phrase in str(info.value)


def test_a_recommendation_config_needs_user_and_item_and_a_ranking_model():
    with pytest.raises(UserError) as info:
        load_config({"task": "recommendation", "data": {"source": "x.csv"}, "model": {"name": "mlp"}})
    message = str(info.value)
    assert "data.user is required" in message and "data.item is required" in message
    assert "'mlp' is not a recommendation model" in message
    cfg, _ = load_config({"task": "recommendation", "data": {"source": "x.csv", "user": "u", "item": "i"}})
    assert cfg.model.name == "mf" and cfg.train.monitor == "val_ndcg@10" and cfg.evaluate.k == [10, 20]


def test_an_item_table_whose_ids_match_no_interaction_is_refused(tmp_path):
    source = interactions(tmp_path / "r.csv", [("u1", "i1", 1, 1), ("u1", "i2", 1, 2)])
    pd.DataFrame({"item_id": [1, 2], "title": ["A", "B"]}).to_csv(tmp_path / "items.csv", index=False)
    cfg, base = config(source, items=str(tmp_path / "items.csv"))
    with pytest.raises(UserError) as info:
        prepare(cfg, base)
    assert "none of the 2 ids in column 'item_id'" in str(info.value) and "(e.g. 'i1')" in str(info.value)


def test_two_tower_reads_user_and_item_side_features_and_learns_them_into_its_package(tmp_path, monkeypatch):
    import modelfoundry as mf
    from modelfoundry.runner import train

    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    rows = [(f"u{u}", f"i{(u + j) % 8}", 5, j) for u in range(12) for j in range(5)]
    source = interactions(tmp_path / "r.csv", rows)
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(12)], "age": range(12), "job": ["x", "y"] * 6})
    users.to_csv(tmp_path / "users.csv", index=False)
    items = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(8)], "genre": list("abab" * 2), "title": list("ABCDEFGH")}
    )
    items.to_csv(tmp_path / "items.csv", index=False)
    cfg = {
        "task": "recommendation",
        "data": {
            "source": str(source),
            "user": "user_id",
            "item": "item_id",
            "timestamp": "ts",
            "users": str(tmp_path / "users.csv"),
            "items": str(tmp_path / "items.csv"),
        },
        "model": {"name": "two_tower", "dim": 8, "hidden": 16},
        "train": {"epochs": 2, "batch_size": 16},
    }
    run = train(cfg, run_dir=tmp_path / "run")
    spec_shape = mf.load(run.path).spec["input_shape"]
    assert spec_shape == [
        12,
        3,
        2,
    ]  # age (a number), job (2 values) / genre (2 values); titles are not features
    predictor = mf.load(run.path)
    assert predictor.model.user_side[:, 0].std() > 0  # the buffers came back from the package
    answer = predictor.recommend("u1", k=2)[0]
    assert len(answer["items"]) == 2 and "title" in answer["items"][0]


def test_a_compressed_variant_is_scored_by_ranking_and_by_how_much_of_the_top_10_it_keeps():
    from modelfoundry.tasks import get_task
    from modelfoundry.tasks.recommendation import RankingTargets

    scores = torch.arange(40.0).reshape(2, 20)
    targets = RankingTargets(
        ItemSets.from_pairs(np.array([0, 1]), np.array([19, 0]), 2), ItemSets(np.zeros(3), []), np.ones(20)
    )
    task = get_task("recommendation")
    same = task.variant_scores(scores.numpy(), targets, {}, scores.numpy())
    assert same["agreement"] == 1.0 and same["ndcg@10"] == 0.5  # user 0's item ranks first, user 1's last
    shuffled = scores.flip(1).numpy()  # the bottom 10 become the top 10
    assert task.variant_scores(shuffled, targets, {}, scores.numpy())["agreement"] == 0.0


def test_tune_searches_on_a_ranking_metric_and_refuses_a_classifiers():
    base = {"task": "recommendation", "data": {"source": "x.csv", "user": "u", "item": "i"}}
    cfg, _ = load_config({**base, "tune": {"space": {"train.lr": {"loguniform": [0.001, 0.01]}}}})
    assert cfg.tune.metric == "val_ndcg@10"
    with pytest.raises(UserError) as info:
        load_config({**base, "tune": {"metric": "val_accuracy"}})
    assert "'val_accuracy' is not a validation metric of recommendation" in str(info.value)
    assert "val_ndcg@10" in str(info.value)


def test_a_classifier_answers_recommend_and_similar_with_a_422_that_says_why():
    from modelfoundry.errors import InputError
    from modelfoundry.tasks import get_task

    task = get_task("tabular_classification")
    with pytest.raises(InputError) as info:
        task.recommend(None, ["u1"], 10, True)
    assert info.value.status == 422 and "does not recommend" in info.value.message
    with pytest.raises(InputError):
        task.similar(None, "i1", 10)
