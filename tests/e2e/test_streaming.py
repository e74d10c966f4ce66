"""`data.streaming: true` through the real CLI: a table read in chunks trains, predicts and reports like
one read whole, leaves no scratch files behind, and a type change deep in the file is a clear error."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from e2e_helpers import assert_ok, assert_user_error, foundry, table_frame, write_config

pytestmark = pytest.mark.slow


def test_a_streamed_table_trains_predicts_and_reports(tmp_path):
    frame = table_frame(per_class=400)
    frame.loc[::40, "label"] = "a"  # 30 rows against the rule: the report must have mistakes to show
    frame.to_parquet(tmp_path / "big.parquet")
    config = write_config(
        tmp_path / "stream.yaml",
        "tabular_classification",
        "big.parquet",
        data={"streaming": True},
        model={"hidden": [16]},
        train={"epochs": 4, "lr": 0.01, "precision": "fp32"},
    )
    result = foundry("train", config, cwd=tmp_path, home=tmp_path / "runs")
    assert_ok(result)
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    report = json.loads((run / "data_report.json").read_text())
    assert report["n_examples"] == 1200 and sum(report["splits"].values()) == 1200
    assert report["streaming"]["encoder_fitted_on_rows"] == report["splits"]["train"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.85  # x1 separates the classes by 3 standard deviations
    mistakes = (run / "report.html").read_text().split("Worst mistakes", 1)[1]
    assert (
        "Showing the" in mistakes and "color" in mistakes and "x1" in mistakes
    )  # rows read back from the file
    assert not any((tmp_path / "runs" / ".scratch").iterdir())  # the encoded copy is gone with the run

    frame.drop(columns="label").head(5).to_csv(tmp_path / "rows.csv", index=False)
    predicted = foundry("predict", run, "rows.csv", "-o", "out.csv", cwd=tmp_path, home=tmp_path / "runs")
    assert_ok(predicted)
    out = pd.read_csv(tmp_path / "out.csv")
    assert (out["label"] == frame["label"].head(5).to_numpy()).mean() >= 0.8


def test_a_number_column_that_turns_to_text_deep_in_the_file_is_named(tmp_path):
    # 90,000 rows, about 2.7 MB: beyond the first megabyte that Arrow types the columns from
    frame = table_frame(per_class=30000).astype({"x2": object})
    frame.loc[len(frame) - 1, "x2"] = "unknown"
    frame.to_csv(tmp_path / "big.csv", index=False)
    config = write_config(
        tmp_path / "stream.yaml", "tabular_classification", "big.csv", data={"streaming": True}
    )
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"),
        "big.csv",
        "column 'x2' holds numbers in the file's first rows and 'unknown'",
        "data.streaming: false",
    )


def test_an_image_folder_decoded_per_batch_trains_exactly_as_one_read_whole(tmp_path):
    from e2e_helpers import write_image_folder

    write_image_folder(tmp_path / "images", per_class=24)
    histories = {}
    for streaming in (True, False):
        config = write_config(
            tmp_path / f"{streaming}.yaml",
            "image_classification",
            "images",
            data={"streaming": streaming},
            train={"epochs": 2, "precision": "fp32"},
        )
        home = tmp_path / f"runs-{streaming}"
        assert_ok(foundry("train", config, cwd=tmp_path, home=home))
        run = next(p for p in home.iterdir() if p.is_dir() and not p.name.startswith("."))
        metrics = json.loads((run / "metrics.json").read_text())
        histories[streaming] = (
            [r[k] for r in metrics["history"] for k in ("train_loss", "val_loss")],
            metrics["test"],
        )
        if metrics["test"]["accuracy"] < 1:  # thumbnails decoded from the files
            assert "<img" in (run / "report.html").read_text().split("Worst mistakes", 1)[1]
    (lazy_history, lazy_test), (whole_history, whole_test) = histories[True], histories[False]
    assert lazy_history == pytest.approx(whole_history, abs=1e-6)  # the same batches, in the same order
    assert lazy_test["accuracy"] == whole_test["accuracy"]


def test_a_streamed_text_table_trains_predicts_and_shows_its_texts(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    words = {"pos": ["great", "lovely", "superb"], "neg": ["awful", "dull", "poor"]}
    labels = rng.choice(["pos", "neg"], 600)
    texts = [" ".join(rng.choice(words[label], 4)) + f" r{i}" for i, label in enumerate(labels)]
    texts[5] = ""  # an empty cell: skipped and counted, never the text "nan"
    flipped = list(range(0, 600, 20))  # 30 reviews labelled against their words: mistakes the report shows
    labels[flipped] = np.where(labels[flipped] == "pos", "neg", "pos")
    pd.DataFrame({"review": texts, "sentiment": labels}).to_csv(tmp_path / "reviews.csv", index=False)
    config = write_config(
        tmp_path / "stream.yaml",
        "text_classification",
        "reviews.csv",
        data={"text": "review", "label": "sentiment", "streaming": True, "max_length": 16},
        model={"name": "lstm", "embed_dim": 16, "hidden": 16},
        train={"epochs": 3, "lr": 0.01, "precision": "fp32"},
    )
    assert_ok(foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"))
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    report = json.loads((run / "data_report.json").read_text())
    assert report["streaming"] and report["empty_texts"] == 1 and report["n_examples"] == 599
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] > 0.85
    mistakes = (run / "report.html").read_text().split("Worst mistakes", 1)[1]
    shown = re.sub(r"<[^>]+>", "", mistakes)  # the worst are drawn with their tokens' attributions
    assert any(f"{texts[i]}" in shown for i in flipped)  # a mislabelled review, read back from the file
    predicted = foundry(
        "predict",
        run,
        "superb lovely great",
        "dull awful poor",
        "-o",
        "out.csv",
        cwd=tmp_path,
        home=tmp_path / "runs",
    )
    assert_ok(predicted)
    assert pd.read_csv(tmp_path / "out.csv")["label"].tolist() == ["pos", "neg"]
