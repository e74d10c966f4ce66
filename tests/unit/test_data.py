"""Data: splitting, reading tables / images / IDX files, validation, encoding, augmentation, `prepare`."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from modelfoundry.config import load_config
from modelfoundry.data import tabular
from modelfoundry.data.images import augment, read_idx_folder, read_image_folder
from modelfoundry.data.prepare import ArrayData, prepare
from modelfoundry.data.split import split_indices
from modelfoundry.errors import UserError

# ----------------------------------------------------------------------------- split


def labels_60_30_10() -> np.ndarray:
    return np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)


def test_split_is_disjoint_and_complete():
    split = split_indices(labels_60_30_10(), val=0.1, test=0.2, seed=0, stratify=True)
    together = np.concatenate([split["train"], split["val"], split["test"]])
    assert len(together) == 100
    assert set(together.tolist()) == set(range(100))
    assert {k: len(v) for k, v in split.items()} == {"train": 70, "val": 10, "test": 20}


def test_stratified_split_keeps_class_shares():
    labels = labels_60_30_10()
    split = split_indices(labels, val=0.1, test=0.2, seed=3, stratify=True)
    for part, size in (("train", 70), ("val", 10), ("test", 20)):
        counts = pd.Series(labels[split[part]]).value_counts(normalize=True)
        assert counts["a"] == pytest.approx(0.6, abs=1.5 / size)
        assert counts["b"] == pytest.approx(0.3, abs=1.5 / size)
        assert counts["c"] == pytest.approx(0.1, abs=1.5 / size)


def test_split_is_seeded():
    labels = labels_60_30_10()
    first = split_indices(labels, 0.1, 0.2, seed=1, stratify=True)
    again = split_indices(labels, 0.1, 0.2, seed=1, stratify=True)
    other = split_indices(labels, 0.1, 0.2, seed=2, stratify=True)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(first[part], again[part])
    assert not np.array_equal(first["test"], other["test"])


def test_zero_fractions_leave_empty_parts():
    split = split_indices(labels_60_30_10(), val=0.0, test=0.2, seed=0, stratify=True)
    assert len(split["val"]) == 0 and len(split["train"]) == 80


def test_class_with_too_few_examples_is_named():
    labels = np.array(["cat"] * 20 + ["dog"] * 20 + ["axolotl"] * 2)
    with pytest.raises(UserError, match=r"'axolotl' \(2\)") as info:
        split_indices(labels, 0.1, 0.2, seed=0, stratify=True)
    assert "stratify: false" in str(info.value)


def test_unstratified_split_accepts_rare_classes():
    labels = np.array(["cat"] * 20 + ["dog"] * 20 + ["axolotl"] * 2)
    split = split_indices(labels, 0.1, 0.2, seed=0, stratify=False)
    assert sum(len(v) for v in split.values()) == 42


# ----------------------------------------------------------------------------- tables


def test_read_table_empty_file_names_it(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(UserError, match="empty.csv: the file is empty"):
        tabular.read_table(path)


def test_read_table_header_only_names_it(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("a,b,label\n")
    with pytest.raises(UserError, match="header.csv: the table has a header but no data rows"):
        tabular.read_table(path)


def test_read_table_unknown_suffix_lists_formats(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("a\n1\n")
    with pytest.raises(UserError, match=r"data.xlsx: unsupported table format '.xlsx'.*\.csv"):
        tabular.read_table(path)


def test_read_table_jsonl_and_tsv(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"a": 1, "b": "x"}\n{"a": 2, "b": "y"}\n')
    (tmp_path / "t.tsv").write_text("a\tb\n1\tx\n2\ty\n")
    for name in ("t.jsonl", "t.tsv"):
        frame = tabular.read_table(tmp_path / name)
        assert list(frame.columns) == ["a", "b"] and frame["a"].tolist() == [1, 2]


def frame_with_gaps() -> pd.DataFrame:
    return pd.DataFrame({"age": [30.0, np.nan, 50.0, 40.0], "city": ["x", "y", None, "x"]})


def test_missing_impute_keeps_every_row_and_counts_gaps():
    kept, counts = tabular.check_missing(frame_with_gaps(), "impute", 0.5, "people.csv")
    assert len(kept) == 4
    assert counts == {"age": 1, "city": 1}


def test_missing_drop_removes_rows_with_gaps():
    kept, counts = tabular.check_missing(frame_with_gaps(), "drop", 0.5, "people.csv")
    assert kept.index.tolist() == [0, 3]
    assert counts == {"age": 1, "city": 1}


def test_missing_error_names_the_first_empty_cell():
    with pytest.raises(UserError) as info:
        tabular.check_missing(frame_with_gaps(), "error", 0.5, "people.csv")
    message = str(info.value)
    assert "row 2 (line 3 of people.csv)" in message and "'age'" in message and "data.missing" in message


def test_complete_table_passes_every_policy():
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    for policy in ("impute", "drop", "error"):
        kept, counts = tabular.check_missing(frame, policy, 0.5, "t.csv")
        assert len(kept) == 2 and counts == {}


def test_infinite_value_names_row_and_column():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, np.inf, 1.0]})
    with pytest.raises(UserError) as info:
        tabular.check_missing(frame, "impute", 0.5, "t.csv")
    message = str(info.value)
    assert "row 2 (line 3 of t.csv)" in message and "column 'b'" in message and "infinite" in message


def test_mostly_empty_column_is_named():
    frame = pd.DataFrame({"ok": [1, 2, 3, 4], "sparse": [1.0, np.nan, np.nan, np.nan]})
    with pytest.raises(UserError, match=r"column 'sparse' is 75% empty.*max_missing_fraction=0.5"):
        tabular.check_missing(frame, "impute", 0.5, "t.csv")
    kept, _ = tabular.check_missing(frame, "impute", 0.8, "t.csv")
    assert len(kept) == 4


def train_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"age": [20.0, 30.0, np.nan, 50.0, 60.0], "city": ["rome", "oslo", "rome", None, "oslo"]}
    )


def test_encoder_standardises_numbers_on_training_data():
    frame = train_frame()
    encoder = tabular.TableEncoder().fit(frame)
    features = encoder.transform(frame)
    assert encoder.feature_names == ["age", "city=__missing__", "city=oslo", "city=rome"]
    assert features.shape == (5, 4) and features.dtype == np.float32
    assert features[:, 0].mean() == pytest.approx(0, abs=1e-6)
    assert features[:, 0].std() == pytest.approx(1, abs=1e-5)
    # the gap is filled with the median (40), not left as NaN
    assert np.isfinite(features).all()
    assert features[2, 0] == pytest.approx((40 - 40) / features[:, 0].std(), abs=1e-6)


def test_encoder_one_hot_and_unknown_category_is_all_zeros():
    encoder = tabular.TableEncoder().fit(train_frame())
    features = encoder.transform(pd.DataFrame({"age": [30.0, 30.0], "city": ["oslo", "paris"]}))
    np.testing.assert_array_equal(features[0, 1:], [0, 1, 0])
    np.testing.assert_array_equal(features[1, 1:], [0, 0, 0])


def test_encoder_names_a_missing_column():
    encoder = tabular.TableEncoder().fit(train_frame())
    with pytest.raises(UserError, match="new.csv: the model needs column.*'city'.*absent"):
        encoder.transform(pd.DataFrame({"age": [1.0], "cty": ["rome"]}), "new.csv")


def test_encoder_names_row_and_column_of_a_non_number():
    encoder = tabular.TableEncoder().fit(train_frame())
    rows = pd.DataFrame({"age": ["31", "forty"], "city": ["rome", "oslo"]})
    with pytest.raises(UserError) as info:
        encoder.transform(rows, "new.csv")
    message = str(info.value)
    assert "row 2 (line 3 of new.csv)" in message and "column 'age'" in message and "'forty'" in message


def test_encoder_spec_survives_json():
    frame = train_frame()
    encoder = tabular.TableEncoder().fit(frame)
    reloaded = tabular.TableEncoder(json.loads(json.dumps(encoder.spec)))
    np.testing.assert_array_equal(reloaded.transform(frame), encoder.transform(frame))


@pytest.mark.parametrize(
    ("value", "shown", "what"),
    [(np.inf, "inf", "infinite"), (-np.inf, "-inf", "infinite"), (1e308, "1e+308", "too large")],
)
def test_encoder_refuses_infinite_numbers_and_numbers_beyond_float32(value, shown, what):
    """The model computes in float32: 1e308 would become inf there and every probability NaN."""
    encoder = tabular.TableEncoder().fit(train_frame())
    rows = pd.DataFrame({"age": [31.0, value], "city": ["rome", "oslo"]})
    with pytest.raises(UserError) as info:
        encoder.transform(rows, "new.csv")
    message = str(info.value)
    assert "row 2 (line 3 of new.csv)" in message and "column 'age'" in message
    assert f"{shown} is {what}" in message and "np.float64" not in message and "leave them empty" in message


def test_encoder_takes_a_large_number_that_fits_float32():
    encoder = tabular.TableEncoder().fit(train_frame())
    features = encoder.transform(pd.DataFrame({"age": [1e30], "city": ["rome"]}))
    assert np.isfinite(features).all()


def test_encoder_ignores_the_columns_it_was_told_to_and_refuses_others():
    encoder = tabular.TableEncoder().fit(train_frame(), ignored=["label", "id"])
    rows = train_frame().assign(label="a", id=range(5))
    np.testing.assert_array_equal(encoder.transform(rows), encoder.transform(train_frame()))
    with pytest.raises(UserError) as info:
        encoder.transform(train_frame().assign(agee=1), "new.csv")
    message = str(info.value)
    assert message.startswith("new.csv: column(s) 'agee'") and "Did you mean 'age'?" in message
    assert "It reads: age, city; it ignores: label, id." in message
    # a package from before ignored columns were recorded ignores every extra column, as it did
    assert tabular.TableEncoder({"columns": encoder.spec["columns"]}).transform(rows).shape == (5, 4)


def test_prepare_records_the_columns_a_table_model_ignores(tmp_path):
    frame = pd.DataFrame(
        {"id": range(40), "x": np.arange(40.0) / 2, "label": ["a", "b"] * 20, "note": ["n"] * 40}
    )
    frame.to_csv(tmp_path / "t.csv", index=False)
    cfg, base = load_config(
        {
            "task": "tabular_classification",
            "data": {"source": str(tmp_path / "t.csv"), "label": "label", "drop": ["id", "note"]},
        }
    )
    data = prepare(cfg, base)
    assert data.preprocessing["ignored_columns"] == ["id", "label", "note"]
    assert "ignored_columns" not in data.report
    cfg, base = load_config({"task": "tabular_classification", "data": {"source": "builtin:iris"}})
    assert prepare(cfg, base).preprocessing["ignored_columns"] == ["target"]


def test_read_table_of_a_latin1_csv_names_the_line_and_byte_and_says_to_re_encode(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("x,label\n1,a\n2,gr\u00fcn\n".encode("latin-1"))
    with pytest.raises(UserError) as info:
        tabular.read_table(path)
    message = str(info.value)
    assert "row 2, line 3, byte 5" in message and "b'\\xfc'" in message and "iconv" in message
    assert "quoting" not in message


# ----------------------------------------------------------------------------- images


def save_png(path, size, mode, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_read_image_folder_grey_resizes_to_the_common_size(tmp_path):
    save_png(tmp_path / "cat" / "1.png", (6, 4), "L", 255)
    save_png(tmp_path / "cat" / "2.png", (6, 4), "L", 255)
    save_png(tmp_path / "dog" / "1.png", (10, 10), "L", 0)
    images, labels, paths, skipped = read_image_folder(tmp_path, size=None, channels=None)
    assert images.shape == (3, 1, 4, 6)  # (N, C, H, W): width 6, height 4 is the most common
    assert labels.tolist() == ["cat", "cat", "dog"]
    assert paths == ["cat/1.png", "cat/2.png", "dog/1.png"]
    assert skipped == []
    assert images[0].max() == pytest.approx(1.0) and images[2].max() == 0.0


def test_read_image_folder_mixed_modes_become_rgb_of_the_asked_size(tmp_path):
    save_png(tmp_path / "red" / "1.png", (5, 5), "RGB", (255, 0, 0))
    save_png(tmp_path / "grey" / "1.png", (9, 7), "L", 128)
    images, labels, _, _ = read_image_folder(tmp_path, size=8, channels=None)
    assert images.shape == (2, 3, 8, 8)
    red = images[labels.tolist().index("red")]
    np.testing.assert_allclose(red[:, 0, 0], [1.0, 0.0, 0.0])
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("lazy", [False, True])
def test_one_colour_image_among_grey_ones_is_converted_to_grey_with_a_warning(tmp_path, lazy):
    from modelfoundry.data.lazy_images import scan

    for i in range(3):
        save_png(tmp_path / "cat" / f"{i}.png", (4, 4), "L", 10)
        save_png(tmp_path / "dog" / f"{i}.png", (4, 4), "L", 200)
    save_png(tmp_path / "dog" / "odd.png", (4, 4), "RGBA", (255, 0, 0, 255))

    def shape():
        if lazy:
            return scan(tmp_path, None, None)[3]
        return read_image_folder(tmp_path, size=None, channels=None)[0].shape[1:]

    with pytest.warns(
        UserWarning, match=r"most images are grey.*1 colour image\(s\) are converted to grey: dog/odd.png"
    ):
        found = shape()
    assert found == (1, 4, 4)


def test_asked_channels_convert_without_a_warning(tmp_path):
    save_png(tmp_path / "cat" / "1.png", (4, 4), "L", 10)
    save_png(tmp_path / "dog" / "1.png", (4, 4), "RGBA", (255, 0, 0, 255))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, _, _, _ = read_image_folder(tmp_path, size=None, channels=1)
    assert images.shape == (2, 1, 4, 4)


def test_corrupt_image_is_skipped_with_a_warning(tmp_path):
    save_png(tmp_path / "a" / "good.png", (4, 4), "L", 10)
    save_png(tmp_path / "b" / "good.png", (4, 4), "L", 20)
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="broken.png"):
        images, labels, _, skipped = read_image_folder(tmp_path, size=None, channels=None)
    assert len(images) == 2 and labels.tolist() == ["a", "b"]
    assert len(skipped) == 1 and "broken.png" in skipped[0]


def test_folder_of_only_corrupt_images_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="no readable images"):
            read_image_folder(tmp_path, size=None, channels=None)


def test_image_folder_without_class_folders_is_an_error(tmp_path):
    save_png(tmp_path / "loose.png", (4, 4), "L", 0)
    with pytest.raises(UserError, match="one sub-folder per class"):
        read_image_folder(tmp_path, size=None, channels=None)


def write_idx(folder, pixels: np.ndarray, labels: np.ndarray, gz: bool = False):
    n, rows, cols = pixels.shape
    image_bytes = (
        (0x0803).to_bytes(4, "big")
        + b"".join(v.to_bytes(4, "big") for v in (n, rows, cols))
        + pixels.astype(np.uint8).tobytes()
    )
    label_bytes = (0x0801).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.astype(np.uint8).tobytes()
    suffix = ".gz" if gz else ""
    opener = gzip.compress if gz else (lambda b: b)
    (folder / f"train-images-idx3-ubyte{suffix}").write_bytes(opener(image_bytes))
    (folder / f"train-labels-idx1-ubyte{suffix}").write_bytes(opener(label_bytes))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_folder(tmp_path, gz):
    pixels = np.arange(3 * 2 * 4).reshape(3, 2, 4) * 10
    write_idx(tmp_path, pixels, np.array([7, 1, 7]), gz=gz)
    images, labels, names = read_idx_folder(tmp_path)
    assert images.shape == (3, 1, 2, 4)
    np.testing.assert_allclose(images[:, 0] * 255, pixels, atol=1e-4)
    assert labels.tolist() == ["7", "1", "7"]
    assert names == ["#0", "#1", "#2"]


def test_idx_folder_with_label_count_mismatch(tmp_path):
    write_idx(tmp_path, np.zeros((3, 2, 2)), np.array([1, 2, 3]))
    labels_file = tmp_path / "train-labels-idx1-ubyte"
    labels_file.write_bytes(labels_file.read_bytes()[:-1])  # one label short
    with pytest.raises(UserError, match="3 images but 2 labels"):
        read_idx_folder(tmp_path)


def test_truncated_idx_images_file_is_named(tmp_path):
    write_idx(tmp_path, np.zeros((3, 2, 2)), np.array([1, 2, 3]))
    images_file = tmp_path / "train-images-idx3-ubyte"
    images_file.write_bytes(images_file.read_bytes()[:-1])
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        read_idx_folder(tmp_path)


def test_16_bit_grey_png_keeps_its_shades(tmp_path):
    ramp = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    (tmp_path / "a").mkdir()
    Image.fromarray(ramp).save(tmp_path / "a" / "deep.png")  # mode I;16
    save_png(tmp_path / "b" / "plain.png", (8, 8), "L", 0)
    images, labels, _, _ = read_image_folder(tmp_path, size=None, channels=None)
    deep = images[labels.tolist().index("a"), 0]
    np.testing.assert_allclose(deep, ramp / 65535, atol=1 / 255)


# ----------------------------------------------------------------------------- augmentation


def ramp_batch(b=16) -> torch.Tensor:
    return torch.arange(b * 5 * 5, dtype=torch.float32).reshape(b, 1, 5, 5) + 1


def test_augment_with_everything_off_returns_the_input():
    batch = ramp_batch()
    out = augment(batch, torch.Generator().manual_seed(0), crop_padding=0, flip=False, rotation=0.0)
    assert torch.equal(out, batch)


@pytest.mark.parametrize(
    "options",
    [
        dict(crop_padding=2, flip=False, rotation=0.0),
        dict(crop_padding=0, flip=True, rotation=0.0),
        dict(crop_padding=1, flip=True, rotation=15.0),
    ],
)
def test_augment_keeps_shape_and_is_seeded(options):
    batch = ramp_batch().expand(16, 3, 5, 5).contiguous()
    first = augment(batch, torch.Generator().manual_seed(5), **options)
    again = augment(batch, torch.Generator().manual_seed(5), **options)
    other = augment(batch, torch.Generator().manual_seed(6), **options)
    assert first.shape == batch.shape
    assert torch.equal(first, again)
    assert not torch.equal(first, batch)
    assert not torch.equal(first, other)


def test_flip_mirrors_some_images_and_leaves_the_rest():
    batch = ramp_batch()
    out = augment(batch, torch.Generator().manual_seed(0), crop_padding=0, flip=True, rotation=0.0)
    flipped = [torch.equal(o, b.flip(-1)) for o, b in zip(out, batch)]
    kept = [torch.equal(o, b) for o, b in zip(out, batch)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`image` (C, H, W) moved by (dy, dx) whole pixels, zero-filled."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_crop_padding_is_a_whole_pixel_shift_within_the_padding():
    batch = ramp_batch()
    out = augment(batch, torch.Generator().manual_seed(0), crop_padding=1, flip=False, rotation=0.0)
    moves = []
    for o, b in zip(out, batch):
        match = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.allclose(o, shifted(b, dy, dx), atol=1e-4)
        ]
        assert match, "every augmented image is the original moved by at most crop_padding pixels"
        moves.append(match[0])
    assert len(set(moves)) > 1


# ----------------------------------------------------------------------------- ArrayData


def test_array_data_batches_cover_every_example_once():
    data = ArrayData(np.arange(10, dtype=np.float32)[:, None], np.arange(10))
    ordered = torch.cat([x for x, _ in data.batches(4)])
    assert ordered[:, 0].tolist() == list(range(10))
    shuffled = [(x, y) for x, y in data.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert [len(y) for _, y in shuffled] == [4, 4, 2]
    xs, ys = torch.cat([x for x, _ in shuffled])[:, 0], torch.cat([y for _, y in shuffled])
    assert sorted(ys.tolist()) == list(range(10)) and ys.tolist() != list(range(10))
    assert torch.equal(xs.long(), ys)  # inputs and targets stay paired


# ----------------------------------------------------------------------------- prepare


def test_prepare_builtin_digits():
    cfg, base = load_config({"task": "image_classification", "data": {"source": "builtin:digits"}})
    data = prepare(cfg, base)
    assert data.input_shape == (1, 8, 8)
    assert data.labels == [str(i) for i in range(10)]
    assert data.train.inputs.shape[1:] == (1, 8, 8)
    assert data.train.inputs.min() >= 0 and data.train.inputs.max() <= 1
    splits = data.report["splits"]
    assert splits == {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    assert sum(splits.values()) == 1797 == data.report["n_examples"]
    assert len(data.test) == pytest.approx(0.2 * 1797, abs=2)
    assert set(data.report["class_counts"]) == set(data.labels)
    assert sum(data.report["class_counts"].values()) == 1797
    assert set(data.report["leakage"]) == {"train_test", "train_val", "val_test"}
    assert data.report["duplicates"] >= 0
    assert data.preprocessing == {"kind": "image", "size": [8, 8], "channels": 1}


def write_csv_with_duplicates(path) -> None:
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {"x": rng.normal(size=60).round(3), "kind": rng.choice(["p", "q"], 60), "label": ["yes", "no"] * 30}
    )
    pd.concat([rows, rows.iloc[:30]]).to_csv(path, index=False)  # 30 rows appear twice


def table_config(path, **data) -> dict:
    return {
        "task": "tabular_classification",
        "data": {"source": str(path), "label": "label", "split": {"val": 0.2, "test": 0.3}, **data},
    }


def test_prepare_table_reports_duplicates_and_leakage(tmp_path):
    path = tmp_path / "dups.csv"
    write_csv_with_duplicates(path)
    cfg, base = load_config(table_config(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = prepare(cfg, base)
    shown = " ".join(str(w.message) for w in caught)
    assert "leakage" in shown and "data.dedupe: true" in shown and "30 exact duplicate" in shown
    assert data.report["duplicates"] == 30
    assert data.report["leakage"]["train_test"] > 0
    assert data.report["n_examples"] == 90
    assert data.input_shape == (3,)  # x + one-hot kind (p, q)
    assert data.labels == ["no", "yes"]
    assert data.preprocessing["kind"] == "table"
    assert len(data.test_display) == len(data.test) and set(data.test_display[0]) == {"x", "kind"}


def test_dedupe_removes_duplicates_and_leakage(tmp_path):
    path = tmp_path / "dups.csv"
    write_csv_with_duplicates(path)
    cfg, base = load_config(table_config(path, dedupe=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare(cfg, base)
    assert data.report["dropped_duplicates"] == 30
    assert data.report["n_examples"] == 60
    assert data.report["leakage"] == {"train_test": 0, "train_val": 0, "val_test": 0}


def test_prepare_table_with_gaps_and_unlabeled_rows(tmp_path):
    path = tmp_path / "gaps.csv"
    frame = pd.DataFrame({"x": np.arange(40.0), "label": ["a", "b"] * 20})
    frame.loc[3, "x"] = np.nan
    frame.loc[5, "label"] = np.nan
    frame.to_csv(path, index=False)
    cfg, base = load_config(table_config(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare(cfg, base)
    assert data.report["dropped_unlabeled_rows"] == 1
    assert data.report["missing"] == {"x": 1}
    assert data.report["n_examples"] == 39
    assert torch.isfinite(data.train.inputs).all()


def test_prepare_single_class_is_an_error(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"x": range(10), "label": ["a"] * 10}).to_csv(path, index=False)
    cfg, base = load_config(table_config(path))
    with pytest.raises(UserError, match="only one class"):
        prepare(cfg, base)


def test_prepare_drop_policy_that_removes_every_row_is_a_user_error(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("a,b,label\n1,,x\n,2,y\n3,,x\n,4,y\n")
    cfg, base = load_config(table_config(path, missing="drop"))
    with pytest.raises(UserError, match="gaps.csv"):
        prepare(cfg, base)


def test_prepare_unknown_label_column_suggests_the_nearest(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": range(10), "labels": ["a", "b"] * 5}).to_csv(path, index=False)
    cfg, base = load_config(table_config(path))
    with pytest.raises(UserError, match="label column 'label' not found. Did you mean 'labels'"):
        prepare(cfg, base)


def test_prepare_unknown_builtin_suggests_the_nearest():
    cfg, base = load_config({"task": "image_classification", "data": {"source": "builtin:digit"}})
    with pytest.raises(UserError, match="Did you mean 'digits'"):
        prepare(cfg, base)


def test_prepare_missing_relative_source_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, base = load_config(table_config("nowhere.csv"))
    with pytest.raises(UserError, match="data.source: 'nowhere.csv' not found.*builtin:iris"):
        prepare(cfg, base)


@pytest.mark.parametrize("key", ["test_source", "feedback"])
def test_a_missing_extra_source_names_its_own_key(tmp_path, monkeypatch, key):
    """data.test_source and data.feedback.source (written by `foundry retrain`) say which key is wrong."""
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"x": range(20), "label": ["a", "b"] * 10}).to_csv(tmp_path / "train.csv", index=False)
    config = table_config("train.csv")
    config["data"][key] = {"source": "gone.jsonl"} if key == "feedback" else "gone.jsonl"
    cfg, base = load_config(config)
    shown = "data.feedback.source" if key == "feedback" else f"data.{key}"
    with pytest.raises(UserError, match=f"{shown}: 'gone.jsonl' not found"):
        prepare(cfg, base)


def test_prepare_missing_absolute_image_folder_is_named_not_found(tmp_path):
    cfg, base = load_config(
        {"task": "image_classification", "data": {"source": str(tmp_path / "no_such_dir")}}
    )
    with pytest.raises(UserError, match="not found"):
        prepare(cfg, base)
