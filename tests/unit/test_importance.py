"""Permutation importance: a column the predictions ignore scores exactly zero, one they follow scores its
full drop, and the report draws a bar per column."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modelfoundry.data.tabular import TableEncoder
from modelfoundry.evaluate.importance import (
    permutation_importance,
    report_section,
    sample_rows,
    shuffled_block,
    shuffled_frame,
)
from modelfoundry.tasks.tabular import feature_blocks


def test_a_column_the_model_ignores_scores_zero_and_the_one_it_follows_ranks_first():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"noise": rng.normal(size=200), "colour": rng.choice(["red", "blue"], 200)})
    truth = (frame["colour"] == "red").to_numpy().astype(int)

    def predict(rows: pd.DataFrame) -> np.ndarray:  # a "model" that reads colour only
        return (rows["colour"] == "red").to_numpy().astype(int)

    result = permutation_importance(
        predict,
        frame,
        list(frame.columns),
        shuffled_frame,
        lambda p: float((p == truth).mean()),
        "accuracy",
        higher_is_better=True,
        repeats=4,
    )
    assert list(result["columns"]) == ["colour", "noise"] and result["baseline"] == 1.0
    assert result["columns"]["noise"] == {"mean": 0.0, "std": 0.0, "drops": [0.0] * 4}
    assert 0.3 < result["columns"]["colour"]["mean"] < 0.7  # a shuffled coin flip is right half the time
    # lower is better (rmse): the drop is still "how much worse", positive
    values = frame["noise"].to_numpy()
    rmse = permutation_importance(
        lambda rows: rows["noise"].to_numpy(),
        frame,
        list(frame.columns),
        shuffled_frame,
        lambda p: float(np.sqrt(np.mean((p - values) ** 2))),
        "rmse",
        higher_is_better=False,
    )
    assert rmse["columns"]["noise"]["mean"] > 1 and rmse["columns"]["colour"]["mean"] == 0
    _anchor, heading, html = report_section(result)
    assert heading == "Column importance" and html.count("<img") == 1 and "4 times over 200 test rows" in html


def test_a_large_test_split_is_sampled_the_same_way_every_time():
    assert len(sample_rows(100)) == 100
    rows = sample_rows(20_000)
    assert len(rows) == 5000 and (np.diff(rows) > 0).all() and (rows == sample_rows(20_000)).all()


def test_shuffling_a_columns_encoded_features_equals_encoding_the_shuffled_column():
    """Why the table task may encode once: a category's one-hot block moves as its column would."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, 50),
            "colour": rng.choice(["red", "blue", "green"], 50),
            "n": rng.integers(0, 9, 50),
        }
    )
    encoder = TableEncoder().fit(frame)
    blocks = feature_blocks(encoder.spec)
    assert [len(blocks[c]) for c in frame.columns] == [1, 3, 1]
    for name in frame.columns:
        order = rng.permutation(50)
        expected = encoder.transform(shuffled_frame(frame, name, order))
        assert (shuffled_block(encoder.transform(frame), blocks[name], order) == expected).all()
