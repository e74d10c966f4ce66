"""Recommendation through the real CLI: train on a tiny interaction file, then predict, evaluate new
interactions, serve recommendations and similar items."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from e2e_helpers import assert_ok, foundry


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
    interaction_frame().to_csv(folder / "inter.csv", index=False)
    config = folder / "rec.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "recommendation",
                "data": {"source": "inter.csv", "user": "user_id", "item": "item_id", "timestamp": "ts"},
                "model": {"name": "mf", "dim": 16},
                "train": {"epochs": 20, "batch_size": 64, "lr": 0.02},
            }
        )
    )
    result = foundry("train", config, "--run-dir", home / "rec", cwd=folder, home=home)
    assert_ok(result)
    return folder, home, home / "rec", result


def test_mf_learns_the_taste_groups_and_beats_the_popularity_baseline_shown_beside_it(rec_run):
    _folder, _home, run, result = rec_run
    assert "test ndcg@10" in result.stdout and "test ndcg@10 of popularity" in result.stdout
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert {"ndcg@10", "recall@20", "hitrate@10", "mrr", "coverage@10", "popularity_bias@10"} <= set(test)
    assert test["users"] == 60  # each user's last interaction, ranked against every unseen item
    assert test["ndcg@10"] > test["popularity"]["ndcg@10"] + 0.1
    report = json.loads((run / "data_report.json").read_text())
    assert report["splits"]["test"] == 60 and report["duplicate_pairs"] > 0
    assert report["cold_start"]["test"] == {"items": 0, "users": 0}
