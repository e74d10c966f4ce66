"""Text data: reading, checking, scrubbing, tokenizing and batching, as a user of text_classification sees
it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelfoundry.config import load_config
from modelfoundry.data import text
from modelfoundry.data.prepare import prepare
from modelfoundry.errors import UserError

POSITIVE = [
    "a wonderful film",
    "great acting and a moving story",
    "I loved every minute",
    "charming and funny",
    "a beautiful, clever movie",
    "the best film this year",
]
NEGATIVE = [
    "a dull mess",
    "boring and far too long",
    "I hated the ending",
    "the plot makes no sense",
    "a waste of two hours",
    "flat characters and bad jokes",
]


@pytest.fixture(scope="module")
def tokenizer():
    return text.load_tokenizer(text.default_model_path())


def write_reviews(path, rows, header="review,sentiment"):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header.split(","))
        writer.writerows(rows)
    return path


def reviews(n_each=6):
    rows = []
    for i in range(n_each):
        rows += [(f"{POSITIVE[i % 6]} {i}", "pos"), (f"{NEGATIVE[i % 6]} {i}", "neg")]
    return rows


def text_config(tmp_path, **data):
    return load_config(
        {
            "task": "text_classification",
            "data": {
                "source": str(tmp_path / "reviews.csv"),
                "text": "review",
                "label": "sentiment",
                "split": {"val": 0.25, "test": 0.25, "seed": 0},
                **data,
            },
            "model": {"name": "lstm"},
        }
    )


# ---------------------------------------------------------------- tokenizing and batching


def test_tokenize_truncates_to_max_length_and_counts_it(tokenizer):
    ids, truncated = text.tokenize(tokenizer, ["short one", "a much longer text " * 20], max_length=8)
    assert [len(i) for i in ids][1] == 8 and len(ids[0]) == 4  # [CLS] short one [SEP]
    assert ids[1][-1].item() == tokenizer.token_to_id("[SEP]")  # the closing token survives the cut
    assert truncated == 1


def test_batches_pad_to_their_own_longest_text():
    ids = [torch.arange(1, n + 1) for n in (2, 9, 3)]
    ((x, y),) = text.TextData(ids, [0, 1, 0], pad=0).batches(3)
    assert x.shape == (3, 9) and (x[0, 2:] == 0).all() and y.tolist() == [0, 1, 0]


def test_shuffled_epoch_yields_every_example_once_and_repeats_with_the_seed():
    lengths = np.random.default_rng(0).integers(1, 60, size=301)
    data = text.TextData([torch.full((int(n),), i + 1) for i, n in enumerate(lengths)], np.arange(301), pad=0)

    def epoch(seed):
        return [
            y.tolist()
            for _, y in data.batches(16, shuffle=True, generator=torch.Generator().manual_seed(seed))
        ]

    seen = sorted(i for batch in epoch(0) for i in batch)
    assert seen == list(range(301))
    assert len(epoch(0)) == 19  # ceil(301 / 16), as the trainer's progress bar and schedule assume
    assert epoch(0) == epoch(0) and epoch(0) != epoch(1)


def test_length_buckets_cut_padding_against_random_batches():
    lengths = np.random.default_rng(0).integers(1, 60, size=2000)
    data = text.TextData([torch.ones(int(n), dtype=torch.long) for n in lengths], np.zeros(2000), pad=0)

    def padded_share(batches):
        cells = real = 0
        for x, _ in batches:
            cells, real = cells + x.numel(), real + (x != 0).sum().item()
        return 1 - real / cells

    bucketed = padded_share(data.batches(32, shuffle=True, generator=torch.Generator().manual_seed(0)))
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(0))
    plain = padded_share(data._batch(order[i : i + 32]) for i in range(0, 2000, 32))
    assert bucketed < 0.1 and plain > 0.4


# ---------------------------------------------------------------- reading and checking


def test_missing_text_column_suggests_the_nearest(tmp_path):
    write_reviews(tmp_path / "reviews.csv", reviews())
    with pytest.raises(UserError, match="text column 'reveiw' not found. Did you mean 'review'?"):
        prepare(*text_config(tmp_path, text="reveiw"))


def test_all_empty_texts_is_an_error(tmp_path):
    write_reviews(tmp_path / "reviews.csv", [("  ", "pos"), ("", "neg")] * 4)
    with pytest.raises(UserError, match="every text is empty or whitespace only"):
        prepare(*text_config(tmp_path))


def test_undecodable_bytes_name_the_row_and_line(tmp_path):
    path = write_reviews(tmp_path / "reviews.csv", reviews())
    lines = path.read_bytes().split(b"\n")
    lines[3] = b"caf\xe9 au lait,pos"  # latin-1, not UTF-8
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(
        UserError, match=r"reviews.csv: row 3, line 4, byte 4: b'\\xe9' is not valid UTF-8.*iconv"
    ):
        prepare(*text_config(tmp_path))


def test_words_like_na_and_null_are_texts_not_missing_values(tmp_path):
    write_reviews(tmp_path / "reviews.csv", reviews() + [("NA", "pos"), ("null", "neg")])
    data = prepare(*text_config(tmp_path))
    assert data.report["empty_texts"] == 0 and data.report["n_examples"] == 14


def test_empty_texts_are_skipped_and_counted(tmp_path):
    write_reviews(tmp_path / "reviews.csv", reviews() + [("   ", "pos"), ("", "neg")])
    data = prepare(*text_config(tmp_path))
    assert data.report["empty_texts"] == 2 and data.report["n_examples"] == 12
    assert any("2 empty or whitespace-only texts" in w for w in data.report["warnings"])


def test_quoting_off_reads_stray_quotes_as_text(tmp_path):
    rows = "\n".join(f'{t} "\t{y}' for t, y in reviews())  # SST-2 style: a quote that encloses nothing
    (tmp_path / "reviews.tsv").write_text("review\tsentiment\n" + rows + "\n")
    data = prepare(*text_config(tmp_path, source=str(tmp_path / "reviews.tsv"), quoting=False))
    assert data.report["n_examples"] == 12


def test_pii_is_redacted_counted_or_dropped(tmp_path):
    rows = reviews() + [
        ("mail me: ann@example.com, a wonderful film", "pos"),
        ("card 4111 1111 1111 1111 charged twice, a dull mess", "neg"),
        ("order 1234567812345678 was a waste of two hours", "neg"),
    ]  # fails Luhn: no card
    write_reviews(tmp_path / "reviews.csv", rows)
    redacted = prepare(*text_config(tmp_path, privacy={"pii": "redact"}))
    assert redacted.report["pii"]["EMAIL"] == 1 and redacted.report["pii"]["CARD"] == 1
    texts, _ = text.clean_texts(
        [r[0] for r in rows], np.array([r[1] for r in rows]), "redact", "reviews.csv", {}
    )
    assert "mail me: [EMAIL], a wonderful film" in texts and "card [CARD] charged twice, a dull mess" in texts
    assert "order 1234567812345678 was a waste of two hours" in texts
    dropped = prepare(*text_config(tmp_path, privacy={"pii": "drop"}))
    assert dropped.report["pii_dropped_rows"] == 2 and dropped.report["n_examples"] == 13
    assert prepare(*text_config(tmp_path, privacy={"pii": "off"})).report["pii"] == {}


def test_separate_validation_and_test_files_are_used_as_given(tmp_path):
    write_reviews(tmp_path / "reviews.csv", reviews())
    write_reviews(tmp_path / "dev.csv", [("a lovely film", "pos"), ("a dreadful film", "neg")])
    write_reviews(tmp_path / "test.csv", [("superb", "pos"), ("awful", "neg"), ("fine fun", "pos")])
    data = prepare(
        *text_config(tmp_path, val_source=str(tmp_path / "dev.csv"), test_source=str(tmp_path / "test.csv"))
    )
    assert data.report["splits"] == {"train": 12, "val": 2, "test": 3}
    assert sorted(data.test_display) == ["awful", "fine fun", "superb"]


def test_a_label_only_in_the_test_file_is_an_error(tmp_path):
    write_reviews(tmp_path / "reviews.csv", reviews())
    write_reviews(tmp_path / "test.csv", [("meh", "mixed"), ("superb", "pos")])
    with pytest.raises(UserError, match="test.csv: label.*'mixed' never appear in the training file"):
        prepare(*text_config(tmp_path, test_source=str(tmp_path / "test.csv")))


def test_max_length_beyond_the_pretrained_model_is_an_error(tmp_path, tiny_bert):
    write_reviews(tmp_path / "reviews.csv", reviews())
    config, base = text_config(tmp_path, max_length=100)
    config.model = type(config.model)(name="pretrained", path=str(tiny_bert))
    with pytest.raises(
        UserError, match=r"data.max_length: 100 is more than .* supports \(64 tokens.*64 or less"
    ):
        prepare(config, base)


def test_test_examples_are_stored_shortest_first_with_matching_texts(tmp_path, tokenizer):
    write_reviews(tmp_path / "reviews.csv", reviews(12))
    data = prepare(*text_config(tmp_path))
    lengths = data.test.lengths.tolist()
    assert lengths == sorted(lengths)
    assert [len(t) for t in text.tokenize(tokenizer, data.test_display, 512)[0]] == lengths
    assert json.loads(data.files["tokenizer.json"])["model"]["type"] == "WordPiece"


def test_tokenizer_path_that_does_not_exist(tmp_path):
    write_reviews(tmp_path / "reviews.csv", reviews())
    with pytest.raises(UserError, match="tokenizer: .*nope not found.*data.tokenizer"):
        prepare(*text_config(tmp_path, tokenizer=str(tmp_path / "nope")))


def test_model_folder_with_a_damaged_config_json(tmp_path, tiny_bert):
    import shutil

    folder = shutil.copytree(tiny_bert, tmp_path / "enc")
    (folder / "config.json").write_text("{not json")
    write_reviews(tmp_path / "reviews.csv", reviews())
    config, base = text_config(tmp_path)
    config.model = type(config.model)(name="pretrained", path=str(folder))
    with pytest.raises(UserError, match=r"model.path: .*config.json could not be read as JSON"):
        prepare(config, base)


@pytest.mark.parametrize(
    "key, value", [("text", "review"), ("max_length", 64), ("privacy", {"pii": "redact"})]
)
def test_text_keys_on_another_task_are_refused_not_ignored(key, value):
    with pytest.raises(
        UserError,
        match=f"data.{key}: only for task text_classification; this config's task is tabular_classification",
    ):
        load_config({"task": "tabular_classification", "data": {"source": "builtin:wine", key: value}})
