"""report.html: self-contained, escaped, and complete for both training and re-evaluation runs."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from modelfoundry.evaluate.report import MAX_MISTAKES, write_report


def split_metrics(labels: list[str], accuracy: float, with_auc: bool = True) -> dict:
    per_class = {label: {"precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 4} for label in labels}
    metrics = {
        "accuracy": accuracy,
        "precision_macro": 0.81,
        "recall_macro": 0.82,
        "f1_macro": 0.8125,
        "f1_weighted": 0.83,
        "ece": 0.05,
        "loss": 0.4,
        "per_class": per_class,
        "confusion_matrix": [[3, 1], [0, 4]],
        "reliability": {
            "bin_confidence": [0.55, 0.75, 0.95],
            "bin_accuracy": [0.5, 0.7, 1.0],
            "bin_count": [2, 3, 3],
        },
    }
    if with_auc:
        metrics["roc_auc"] = 0.9375
    return metrics


def full_inputs(labels: list[str]) -> dict:
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "val_accuracy": 0.5 + e / 10,
            "val_f1_macro": 0.4 + e / 10,
            "lr": 0.1 / e,
            "seconds": 1.5,
        }
        for e in (1, 2, 3)
    ]
    mistakes = [
        {"true": labels[0], "pred": labels[1], "confidence": 0.97, "image": np.random.rand(8, 8)},
        {"true": labels[1], "pred": labels[0], "confidence": 0.91, "image": np.random.rand(3, 8, 8)},
    ]
    data_report = {
        "n_examples": 100,
        "splits": {"train": 70, "val": 10, "test": 20},
        "class_counts": dict(zip(labels, (60, 40))),
        "missing": {"age": 3, "income": 0},
        "duplicates": 2,
        "leakage": {"train_test": 1, "train_val": 0, "val_test": 0},
        "unreadable": ["images/broken.png"],
        "warnings": ["class imbalance 60:40"],
        "label_noise_estimate": 0.07,
    }
    return dict(
        title="Digits run",
        history=history,
        labels=labels,
        mistakes=mistakes,
        data_report=data_report,
        metrics={"test": split_metrics(labels, 0.875), "val": split_metrics(labels, 0.9)},
        config={"task": "image_classification", "train": {"epochs": 3, "lr": 0.1}},
    )


def write(tmp_path, **overrides) -> str:
    inputs = full_inputs(["cat", "dog"]) | overrides
    path = write_report(tmp_path / "out" / "report.html", **inputs)
    return path.read_text(encoding="utf-8")


def write_mistakes_only(tmp_path, mistakes: list[dict]) -> str:
    """A report without plots: the mistakes section does not depend on them and plots are slow."""
    return write(tmp_path, mistakes=mistakes, history=[], metrics={}, data_report={})


@pytest.fixture(scope="module")
def full_page(tmp_path_factory) -> str:
    return write(tmp_path_factory.mktemp("full"))


def thumbnails(page: str) -> list[Image.Image]:
    encoded = re.findall(r'<img alt="example" src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in encoded]


def test_full_report_is_self_contained_and_shows_headline_numbers(tmp_path):
    path = write_report(tmp_path / "report.html", **full_inputs(["cat", "dog"]))

    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"
    assert list(tmp_path.iterdir()) == [path]  # no .tmp file left behind
    assert "<title>Digits run</title>" in page
    assert "0.875" in page and "0.812" in page and "0.938" in page  # accuracy, macro F1, ROC-AUC tiles
    assert "http://" not in page and "https://" not in page
    # learning curves, confusion matrix (test + val), reliability, class balance, 2 thumbnails
    assert page.count("data:image/png;base64,") == 1 + 2 + 1 + 1 + 2
    headings = [
        "Learning curves",
        "Confusion matrix",
        "Per-class metrics",
        "Calibration",
        "Worst mistakes",
        "Data report",
        "Config",
    ]
    positions = [page.find(f"<h2>{heading}</h2>") for heading in headings]
    assert -1 not in positions and positions == sorted(positions)  # every section, in order


def test_data_report_highlights_problems_and_shows_unknown_keys(full_page):
    assert '<div class="warn">' in full_page and "class imbalance 60:40" in full_page
    assert "images/broken.png" in full_page
    assert "label_noise_estimate" in full_page and "0.07" in full_page
    assert "<tr class=bad><th>train_test</th>" in full_page  # leaked examples stand out
    assert "<tr class=bad><th>train_val</th>" not in full_page


def test_config_is_shown_as_yaml(full_page):
    assert "task: image_classification" in full_page
    assert "epochs: 3" in full_page


def test_user_strings_are_escaped_and_odd_labels_render(tmp_path):
    labels = ["<script>alert(1)</script>", "$5-$10"]  # "$...$" would crash matplotlib's mathtext parser
    inputs = full_inputs(labels)
    text_mistake = {"true": labels[0], "pred": labels[1], "confidence": 0.5, "text": "<script>x</script>"}
    inputs["mistakes"].append(text_mistake)
    inputs["data_report"]["warnings"].append("<script>bad</script>")

    page = write_report(tmp_path / "report.html", **inputs | {"title": "<script>t</script>"}).read_text()

    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "$5-$10" in page


def test_reevaluation_with_only_test_split_and_no_history(tmp_path):
    metrics = {"test": split_metrics(["cat", "dog"], 0.75, with_auc=False)}

    page = write(tmp_path, history=[], metrics=metrics)

    assert "0.750" in page
    assert "Learning curves" not in page
    assert "ROC-AUC</div>" not in page  # no empty tile for a metric that was not computed
    assert "<h2>Confusion matrix</h2>" in page


def test_report_survives_missing_everything(tmp_path):
    page = write_report(
        tmp_path / "r.html",
        title="empty",
        metrics={},
        history=[],
        data_report={},
        labels=[],
        mistakes=[],
        config={},
    ).read_text()

    assert "No metrics were recorded" in page


def test_tiny_images_are_scaled_up_to_visible_thumbnails(full_page):
    assert [image.size for image in thumbnails(full_page)] == [(64, 64), (64, 64)]
    assert [image.mode for image in thumbnails(full_page)] == ["L", "RGB"]


@pytest.mark.parametrize(
    "kind, value, expected",
    [
        (
            "row",
            {"age": 41, "city": "Oslo & <Bergen>"},
            '<th>city</th><td class="num">Oslo &amp; &lt;Bergen&gt;</td>',
        ),
        ("text", "the movie was <great>", "the movie was &lt;great&gt;"),
    ],
)
def test_table_and_text_mistakes_are_rendered(tmp_path, kind, value, expected):
    mistakes = [{"true": "cat", "pred": "dog", "confidence": 0.99, kind: value}]

    page = write_mistakes_only(tmp_path, mistakes)

    assert expected in page
    assert "true <b>cat</b>, predicted <b>dog</b>" in page and "0.990" in page


def test_mistakes_are_capped(tmp_path):
    mistakes = [{"true": "cat", "pred": "dog", "confidence": 0.9, "text": f"example {i}"} for i in range(40)]

    page = write_mistakes_only(tmp_path, mistakes)

    assert page.count('<div class="card">') == MAX_MISTAKES
    assert "example 23<" in page and "example 24<" not in page
    assert "of 40." in page


def test_text_data_report_shows_personal_data_found_and_text_lengths(tmp_path):
    page = write(
        tmp_path,
        data_report={
            "n_examples": 10,
            "pii": {"EMAIL": 2, "PHONE": 0, "CARD": 1},
            "pii_dropped_rows": 3,
            "truncated": 4,
            "empty_texts": 0,
            "tokens": {"mean": 12.5, "p50": 11, "p95": 30, "max": 64, "total": 125},
        },
    )
    assert "Personal data in the texts" in page and "3 rows holding personal data were dropped" in page
    assert (
        '<tr class=bad><th>EMAIL</th><td class="num">2</td>' in page and "PHONE" not in page
    )  # only what was found
    assert (
        "Text length (tokens)" in page
        and '<tr class=bad><th>truncated texts</th><td class="num">4</td>' in page
    )
    assert "Other checks" not in page
    off = write(tmp_path / "off", data_report={"n_examples": 10, "pii": {}})
    assert "Not checked (data.privacy.pii: off)" in off
