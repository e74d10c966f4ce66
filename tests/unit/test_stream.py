"""Tables read in chunks and streamed from disk (data.streaming): the same rows, labels and encoding
as reading the whole file, every training row once per epoch in a seeded shuffled order, and the
same clear errors naming rows and columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from modelfoundry.config import load_config
from modelfoundry.data import stream
from modelfoundry.data.prepare import prepare
from modelfoundry.errors import UserError


def table(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["x0", "x1", "x2"])
    frame["color"] = rng.choice(["red", "green", "blue"], rows)
    frame["label"] = np.where(frame["x0"] > 0, "up", "down")
    return frame


def write(frame: pd.DataFrame, path):
    {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".parquet": lambda: frame.to_parquet(path),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
    }[path.suffix]()
    return path


def config(path, **data):
    cfg, base = load_config(
        {
            "task": "tabular_classification",
            "data": {"source": str(path), "label": "label", "streaming": True, **data},
        }
    )
    return cfg, base


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 500 rows and blocks of 64, so a 3,000-row table crosses every boundary."""
    monkeypatch.setattr(stream, "STREAM_ROWS", 500)
    monkeypatch.setattr(stream, "BLOCK_ROWS", 64)
    monkeypatch.setattr(stream, "WINDOW_BLOCKS", 3)
    monkeypatch.setattr(stream, "CSV_BLOCK_BYTES", 8192)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_chunks_hold_every_row_once_numbered_as_in_the_file(tmp_path, suffix, small_chunks):
    frame = table(1234)
    chunks = list(stream.read_chunks(write(frame, tmp_path / f"t{suffix}"), rows=500))
    assert len(chunks) >= 3
    whole = pd.concat(chunks)
    assert list(whole.index) == list(range(1234))
    pd.testing.assert_frame_equal(whole.reset_index(drop=True), frame, check_dtype=False, atol=1e-9)


def test_streamed_and_in_memory_tables_agree(tmp_path, monkeypatch, small_chunks):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    path = write(table(), tmp_path / "t.csv")
    streamed = prepare(*config(path))
    whole = prepare(*config(path, streaming=False))
    assert streamed.labels == whole.labels == ["down", "up"]
    assert streamed.input_shape == whole.input_shape == (6,)  # 3 numbers + 3 colours one-hot
    assert len(streamed.train) + len(streamed.val) + len(streamed.test) == 3000
    for part in (
        "train",
        "val",
        "test",
    ):  # the hash split is stratified in expectation: shares within 3 points
        assert len(getattr(streamed, part)) / 3000 == pytest.approx(
            len(getattr(whole, part)) / 3000, abs=0.03
        )
    assert streamed.report["class_counts"] == whole.report["class_counts"]
    assert "stratified in expectation" in streamed.report["streaming"]["split"]
    inputs, targets = next(streamed.test.batches(5))
    rows = streamed.test_display.take(range(5))
    assert [streamed.labels[t] for t in targets.tolist()] == [("up" if r["x0"] > 0 else "down") for r in rows]
    colours = inputs[:, 3:].argmax(1).tolist()  # categories are one-hot in sorted order: blue, green, red
    assert [["blue", "green", "red"][c] for c in colours] == [r["color"] for r in rows]


def test_shuffled_epochs_see_every_row_once_in_a_seeded_order(tmp_path, monkeypatch, small_chunks):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    train = prepare(*config(write(table(), tmp_path / "t.parquet"))).train

    def epoch(seed):
        batches = list(train.batches(50, shuffle=True, generator=torch.Generator().manual_seed(seed)))
        assert all(len(y) == 50 for _, y in batches[:-1])
        return torch.cat([x[:, 0] for x, _ in batches])

    ordered = torch.cat([x[:, 0] for x, _ in train.batches(50)])
    first, again, other = epoch(1), epoch(1), epoch(2)
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, ordered)
    assert torch.equal(first.sort().values, ordered.sort().values)  # a permutation of the training rows


def test_missing_value_error_names_the_row_in_a_later_chunk(tmp_path, small_chunks):
    frame = table()
    frame.loc[2100, "x1"] = np.nan
    with pytest.raises(UserError, match=r"row 2101 \(line 2102 of t.csv\), column 'x1' is empty"):
        prepare(*config(write(frame, tmp_path / "t.csv"), missing="error"))


def test_dropped_rows_and_duplicates_are_counted(tmp_path, monkeypatch, small_chunks):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    frame = table()
    frame.loc[10, "x2"] = np.nan
    frame = pd.concat([frame, frame.iloc[:40]], ignore_index=True)  # 40 exact repeats at the end
    data = prepare(*config(write(frame, tmp_path / "t.csv"), missing="drop", dedupe=True))
    assert data.report["duplicates"] == 39  # the row with the gap and its repeat are dropped first
    assert data.report["dropped_rows_with_missing"] == 2
    assert len(data.train) + len(data.val) + len(data.test) == 3040 - 2 - 39


def test_a_column_that_turns_from_numbers_to_text_is_named(tmp_path, small_chunks):
    frame = table().astype({"x0": object})
    frame.loc[2900, "x0"] = "n/a?"
    with pytest.raises(UserError, match="column 'x0' holds numbers in the file's first rows and 'n/a\\?'"):
        prepare(*config(write(frame, tmp_path / "t.csv")))


def test_streaming_refuses_a_separate_test_file(tmp_path):
    path = write(table(100), tmp_path / "t.csv")
    other = write(table(50), tmp_path / "other.csv")
    with pytest.raises(UserError, match="data.test_source need it off"):
        prepare(*config(path, test_source=str(other)))


def text_table(path, rows: int = 1500):
    rng = np.random.default_rng(1)
    words = {"pos": ["great", "lovely", "superb", "fine"], "neg": ["awful", "dull", "poor", "bad"]}
    labels = rng.choice(["pos", "neg"], rows)
    texts = [
        " ".join(rng.choice(words[label], int(rng.integers(1, 12)))) + f" NA {i}"
        for i, label in enumerate(labels)
    ]
    texts[7] = "   "  # skipped and counted
    texts[11] = "write to ann@example.com"
    pd.DataFrame({"review": texts, "sentiment": labels}).to_csv(path, index=False)
    return path


def text_settings(path, **data):
    return {
        "task": "text_classification",
        "model": {"name": "lstm"},
        "data": {
            "source": str(path),
            "text": "review",
            "label": "sentiment",
            "streaming": True,
            "privacy": {"pii": "redact"},
            **data,
        },
    }


def test_streamed_texts_match_the_in_memory_path(tmp_path, monkeypatch, small_chunks):
    from modelfoundry.data import text

    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    path = text_table(tmp_path / "reviews.csv")
    streamed = prepare(*load_config(text_settings(path)))
    whole = prepare(*load_config(text_settings(path, streaming=False)))
    assert streamed.labels == whole.labels and streamed.preprocessing == whole.preprocessing
    assert streamed.files == whole.files
    for key in ("empty_texts", "pii", "tokens", "class_counts", "duplicates"):
        assert streamed.report[key] == whole.report[key], key
    assert sum(streamed.report["splits"].values()) == 1499
    tokenizer = text.load_tokenizer(text.default_model_path())
    inputs, targets = next(streamed.test.batches(len(streamed.test)))
    shown = list(streamed.test_display)
    assert len(shown) == len(streamed.test) and not any("ann@example.com" in t for t in shown)
    for row, t, label in zip(inputs[:50], shown[:50], targets[:50]):
        ids = text.tokenize(tokenizer, [t], 512)[0][0]
        assert (
            torch.equal(row[: len(ids)], ids) and (row[len(ids) :] == streamed.preprocessing["pad_id"]).all()
        )
        assert ("great" in t or "lovely" in t or "superb" in t or "fine" in t) == (
            streamed.labels[label] == "pos"
        )
    lengths = (inputs != streamed.preprocessing["pad_id"]).sum(1)
    assert (lengths[:-1] <= lengths[1:]).float().mean() > 0.9  # written shortest first within each chunk


def test_streamed_text_epochs_see_every_text_once_in_length_buckets(tmp_path, monkeypatch, small_chunks):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    train = prepare(*load_config(text_settings(text_table(tmp_path / "reviews.csv")))).train
    pad = 0
    batches = list(train.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert sum(len(y) for _, y in batches) == len(train)
    padding = sum(int((x == pad).sum()) for x, _ in batches) / sum(x.numel() for x, _ in batches)
    assert (
        padding < 0.15
    )  # buckets: each batch is padded to its own longest text, which is rarely much longer
    seen = sorted(tuple(row[row != pad].tolist()) for x, _ in batches for row in x)
    assert seen == sorted(tuple(row[row != pad].tolist()) for x, _ in train.batches(64) for row in x)


def test_a_streamed_text_file_with_a_latin1_byte_names_its_line(tmp_path, small_chunks):
    path = text_table(tmp_path / "reviews.csv", rows=3000)
    raw = path.read_bytes().replace(b"NA 2500,", b"NA 2500 caf\xe9,")
    path.write_bytes(raw)
    with pytest.raises(UserError, match=r"row 2501, line 2502, byte \d+: b'\\xe9' is not valid UTF-8"):
        prepare(*load_config(text_settings(path)))


def image_folder(root, per_class: int = 30):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((6, 6)) * 100 + 120 * k).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "dark" / "broken.png").write_bytes(b"not a png")
    return root


def test_lazy_images_give_the_batches_of_the_in_memory_path(tmp_path):
    root = image_folder(tmp_path / "images")
    settings = {"task": "image_classification", "data": {"source": str(root)}}
    with pytest.warns(UserWarning, match="broken.png"):
        whole = prepare(*load_config(settings))
    with pytest.warns(UserWarning, match="broken.png"):
        lazy = prepare(*load_config({**settings, "data": {"source": str(root), "streaming": True}}))
    assert type(lazy.train).__name__ == "LazyImages" and lazy.input_shape == whole.input_shape == (1, 6, 6)
    assert lazy.report["splits"] == whole.report["splits"] and len(lazy.report["unreadable"]) == 1
    for part in ("train", "val", "test"):
        a = list(getattr(whole, part).batches(8, shuffle=True, generator=torch.Generator().manual_seed(3)))
        b = list(getattr(lazy, part).batches(8, shuffle=True, generator=torch.Generator().manual_seed(3)))
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert np.array_equal(lazy.test_display.take([0])[0], whole.test_display[0])


def test_auto_streams_only_big_files(tmp_path, monkeypatch):
    path = write(table(100), tmp_path / "t.csv")
    assert not stream.wanted("auto", path) and stream.wanted(True, path) and not stream.wanted(False, path)
    monkeypatch.setattr(stream, "AUTO_BYTES", 10)
    assert stream.wanted("auto", path)


def test_a_class_too_rare_to_reach_the_training_split_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    frame = table(200)
    row = next(
        i for i in range(200) if stream._uniform(np.array([i]), 0, 0)[0] < 0.2
    )  # a row the hash puts in test
    frame.loc[row, "label"] = "sideways"
    with pytest.raises(UserError, match="'sideways' have too few rows for any to fall in the training split"):
        prepare(*config(write(frame, tmp_path / "t.csv")))


@pytest.mark.parametrize(
    "name, content, phrase",
    [
        ("t.csv", b"", "the file is empty"),
        ("t.parquet", b"not parquet", "could not be read as parquet"),
        ("t.jsonl", b'{"x0": 1, "label": "up"}\n{"x0": \n', "could not be read as jsonl"),
    ],
)
def test_an_unreadable_streamed_file_is_named_with_what_is_wrong(tmp_path, name, content, phrase):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=phrase) as error:
        prepare(*config(tmp_path / name))
    assert "data.streaming: false" not in str(error.value)  # the type hint is for type changes only


def prices(rows: int = 3000, seed: int = 0, noise: float = 200) -> pd.DataFrame:
    """A price that a size, a room count and a city decide, plus noise: with the default, the noise (not how
    far training got) sets most of a model's error, so two runs' errors compare closely."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "size": rng.uniform(20, 200, rows),
            "rooms": rng.integers(1, 6, rows).astype(float),
            "city": rng.choice(["north", "south"], rows),
        }
    )
    frame["price"] = (
        1000
        + 30 * frame["size"]
        + 50 * frame["rooms"]
        + 200 * (frame["city"] == "north")
        + rng.normal(0, noise, rows)
    )
    return frame


def test_a_streamed_regression_table_trains_as_well_as_one_read_whole(tmp_path, monkeypatch, small_chunks):
    from rich.console import Console

    from modelfoundry.builder import build
    from modelfoundry.tasks import get_task
    from modelfoundry.training.loop import fit, predict_logits

    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "runs"))
    path = write(prices(), tmp_path / "prices.csv")
    task, prepared, scores = get_task("tabular_regression"), {}, {}
    for streaming in (True, False):
        cfg, base = load_config(
            {
                "task": "tabular_regression",
                "data": {"source": str(path), "label": "price", "streaming": streaming},
                "model": {"name": "mlp", "hidden": [16]},
                "train": {"epochs": 40, "lr": 0.01, "precision": "fp32"},
            }
        )
        data = prepared[streaming] = prepare(cfg, base)
        torch.manual_seed(0)  # the same first weights for both, as the runner seeds before building
        built = build(cfg, base, data, torch.device("cpu"))
        fit(
            built.model,
            data.train,
            data.val,
            cfg.train,
            device=torch.device("cpu"),
            objective=built.objective,
            console=Console(quiet=True),
        )
        spec = {"target": data.target}
        outputs = predict_logits(built.model, data.test)
        scores[streaming] = task.metrics(task.predictions(outputs, spec), data.test.targets.numpy(), spec)
    streamed, whole = prepared[True], prepared[False]
    assert type(streamed.train).__name__ == "StreamedTable" and streamed.train.targets.dtype == torch.float32
    assert streamed.labels == [] and set(streamed.target) == {"column", "mean", "std"}
    # standardised with the mean and std of its own training rows, as the whole table is with its own
    targets = streamed.train.targets.double()
    assert abs(float(targets.mean())) < 1e-5 and float(targets.std(unbiased=False)) == pytest.approx(
        1, abs=1e-4
    )
    assert streamed.target["mean"] == pytest.approx(whole.target["mean"], rel=0.02)
    assert "stratified in expectation" in streamed.report["streaming"]["split"]
    # the report's range is every row's, not the encoder sample's
    assert streamed.report["target"]["max"] == whole.report["target"]["max"]
    # a different split of the same rows (by hash, not by quantile): scores close, not equal
    assert scores[True]["r2"] > 0.97 and scores[True]["r2"] == pytest.approx(scores[False]["r2"], abs=0.01)
    assert scores[True]["rmse"] == pytest.approx(scores[False]["rmse"], rel=0.1)  # about the noise, 200


def test_a_streamed_regression_target_that_is_not_a_number_is_named_by_row_and_column(tmp_path, small_chunks):
    frame = prices().astype({"price": str})
    frame.loc[2100, "price"] = "call us"
    settings = {"task": "tabular_regression", "data": {"label": "price", "streaming": True}}
    settings["data"]["source"] = str(write(frame, tmp_path / "prices.parquet"))
    with pytest.raises(
        UserError, match=r"prices.parquet: row 2101, column 'price': 'call us' is not a number"
    ):
        prepare(*load_config(settings))
