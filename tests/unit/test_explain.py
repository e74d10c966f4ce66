"""Explanations of single predictions: integrated gradients add up to the change they explain, the trees'
SHAP values add up to the score, the tokens and pixels a tiny trained model relies on are the ones it is
shown to rely on, and deleting them hurts it more than deleting others (faithfulness)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from rich.console import Console

import modelfoundry as mf
from modelfoundry.errors import UserError
from modelfoundry.evaluate.explain import explain, integrated_gradients, summary, write_html

QUIET = Console(quiet=True)
NEUTRAL = [
    "the",
    "a",
    "this",
    "my",
    "our",
    "box",
    "table",
    "lamp",
    "phone",
    "chair",
    "door",
    "shoe",
    "bag",
    "cup",
]


def test_integrated_gradients_of_a_linear_function_are_weight_times_change_and_add_up():
    weights = torch.tensor([2.0, -1.0, 0.5])
    x, baseline = torch.tensor([1.0, 3.0, -2.0]), torch.zeros(3)
    attributions, output, start, delta = integrated_gradients(lambda p: p @ weights, x, baseline, steps=4)
    assert torch.allclose(attributions, weights * x) and output == pytest.approx(-2.0) and start == 0
    assert abs(delta) < 1e-6
    # a curved function: more steps, smaller convergence delta
    curved = lambda p: torch.sigmoid(3 * p).prod(-1)  # noqa: E731
    coarse = abs(integrated_gradients(curved, x, baseline, steps=2)[3])
    fine = abs(integrated_gradients(curved, x, baseline, steps=64)[3])
    assert fine < coarse / 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny models whose answer hangs on one thing: a word, the bright half of an image, a column."""
    folder = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(160):
        words = list(rng.choice(NEUTRAL, 6))
        words.insert(int(rng.integers(0, 7)), "great" if i % 2 else "awful")
        texts.append(" ".join(words))
        labels.append("pos" if i % 2 else "neg")
    pd.DataFrame({"review": texts, "sentiment": labels}).to_csv(folder / "reviews.csv", index=False)
    for name, half in (("left", slice(0, 4)), ("right", slice(4, 8))):
        (folder / "images" / name).mkdir(parents=True)
        for i in range(30):
            pixels = rng.uniform(0, 60, (8, 8))
            pixels[:, half] += 150
            Image.fromarray(pixels.astype(np.uint8)).save(folder / "images" / name / f"{i}.png")
    n = 200
    table = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "noise": rng.normal(size=n),
            "color": rng.choice(["red", "green", "blue"], n),
        }
    )
    table["y"] = np.where(table["x"] + (table["color"] == "red") > 0.5, "yes", "no")
    table["price"] = 3 * table["x"] + 2 * (table["color"] == "red") + rng.normal(0, 0.1, n)
    table.to_csv(folder / "table.csv", index=False)
    fast = {"precision": "fp32", "seed": 0}
    configs = {
        "text": {
            "task": "text_classification",
            "data": {"source": "reviews.csv", "text": "review", "label": "sentiment", "max_length": 16},
            "model": {"name": "lstm", "embed_dim": 16, "hidden": 16},
            "train": {"epochs": 8, "lr": 0.01, "batch_size": 16, **fast},
        },
        "image": {
            "task": "image_classification",
            "data": {"source": "images"},
            "model": {"name": "cnn", "width": 4},
            "train": {"epochs": 6, "lr": 0.01, "batch_size": 8, **fast},
        },
        "gbdt": {
            "task": "tabular_classification",
            "data": {"source": "table.csv", "label": "y", "drop": ["price"]},
            "model": {"name": "gbdt", "n_estimators": 30},
        },
        "mlp": {
            "task": "tabular_classification",
            "data": {"source": "table.csv", "label": "y", "drop": ["price"]},
            "model": {"name": "mlp", "hidden": [8]},
            "train": {"epochs": 10, "lr": 0.01, "batch_size": 16, **fast},
        },
        "regression": {
            "task": "tabular_regression",
            "data": {"source": "table.csv", "label": "price", "drop": ["y"]},
            "model": {"name": "gbdt", "n_estimators": 30},
        },
    }
    out = {}
    for name, config in configs.items():
        config["data"]["source"] = str(folder / config["data"]["source"])
        mf.train(config, run_dir=folder / name, console=QUIET)
        out[name] = mf.load(folder / name)
    return folder, out


def test_the_word_a_text_model_reads_gets_the_largest_attribution_and_special_tokens_none(runs):
    _, models = runs
    (e,) = explain(models["text"], ["my lamp is great and the box"])
    tokens = [t["token"] for t in e["tokens"]]
    assert tokens == ["my", "lamp", "is", "great", "and", "the", "box"]  # no [CLS], [SEP] or [PAD]
    assert e["label"] == "pos" and e["top"][0]["name"].startswith("great") and e["top"][0]["attribution"] > 0
    assert abs(e["convergence_delta"]) < 0.05 * abs(e["output"] - e["baseline_output"]) + 1e-3
    # another class asked for: the same word now counts against it
    (against,) = explain(models["text"], ["my lamp is great and the box"], label="neg")
    assert against["explains"] == "probability of 'neg'" and against["top"][0]["attribution"] < 0
    assert summary(e).startswith("probability of 'pos'")


def test_deleting_the_top_attributed_tokens_hurts_more_than_deleting_random_ones(runs):
    """Faithfulness (the bench measures the margin on real data): over held-out texts, the predicted
    class's probability falls further when the top 20% of tokens by attribution are deleted."""
    _, models = runs
    predictor = models["text"]
    rng = np.random.default_rng(1)
    texts = [
        " ".join(np.insert(rng.choice(NEUTRAL, 6), int(rng.integers(0, 7)), w))
        for w in ["great", "awful"] * 6
    ]
    explanations = explain(predictor, texts)
    ids = predictor.encode(texts)
    top_drops, random_drops = [], []
    for e, x in zip(explanations, ids):
        k = max(1, round(0.2 * len(e["tokens"])))
        ranked = [t["index"] for t in sorted(e["tokens"], key=lambda t: -t["attribution"])]
        picked = [int(i) for i in rng.choice([t["index"] for t in e["tokens"]], k, replace=False)]
        column = predictor.labels.index(e["label"])
        for chosen, drops in ((ranked[:k], top_drops), (picked, random_drops)):
            kept = torch.tensor([t for i, t in enumerate(x.tolist()) if i not in chosen])
            drops.append(e["probability"] - predictor.run([kept])[0, column])
    assert np.mean(top_drops) > np.mean(random_drops) + 0.1


def test_the_heat_map_lies_on_the_bright_half_the_model_reads_and_deleting_it_hurts_most(runs):
    _, models = runs
    predictor = models["image"]
    image = np.full((1, 8, 8), 0.1, np.float32)
    image[:, :, 4:] = 0.8  # bright right half: class "right"
    (e,) = explain(predictor, [image])
    heat = np.array(e["heatmap"])
    assert e["label"] == "right" and heat.shape == (8, 8)
    assert heat[:, 4:].sum() > 0 and heat[:, 4:].sum() > heat[:, :4].sum()
    assert e["heatmap_png"].startswith("data:image/png;base64,")
    # the top 20% pixels by attribution, blacked out (the baseline), cost more than a random 20%
    order = np.argsort(-heat, axis=None)[:13]
    random = np.random.default_rng(0).choice(64, 13, replace=False)
    probability = {}
    for name, pixels in (("top", order), ("random", random)):
        copy = image.copy().reshape(1, -1)
        copy[:, pixels] = 0.0
        probability[name] = predictor.predict_proba([copy.reshape(1, 8, 8)])[0, 1]
    assert probability["top"] < probability["random"]


def test_tree_shap_values_fold_one_hot_back_into_the_column_and_add_up_to_the_score(runs):
    _, models = runs
    row = {"x": 1.5, "noise": 0.0, "color": "red"}
    (e,) = explain(models["gbdt"], [row])
    columns = {c["column"]: c for c in e["contributions"]}
    assert list(columns) == [c["column"] for c in e["contributions"]] and set(columns) == {
        "x",
        "noise",
        "color",
    }
    assert columns["color"]["value"] == "red" and columns["x"]["value"] == 1.5
    assert e["top"][0]["name"] in ("x", "color") and e["convergence_delta"] is None
    p = e["probability"]
    assert e["explains"] == "log-odds of 'yes'"
    assert e["output"] == pytest.approx(np.log(p / (1 - p)), abs=1e-4)
    (no,) = explain(models["gbdt"], [row], label="no")  # the other class of two: the same values, negated
    assert no["output"] == pytest.approx(-e["output"]) and no["contributions"][0][
        "contribution"
    ] == pytest.approx(-e["contributions"][0]["contribution"])
    assert sum(c["contribution"] for c in e["contributions"]) + e["baseline_output"] == pytest.approx(
        e["output"]
    )


def test_a_regression_explains_its_value_and_an_mlp_row_adds_up_by_integrated_gradients(runs):
    _, models = runs
    row = {"x": 1.0, "noise": 0.3, "color": "red"}
    (value,) = explain(models["regression"], [row])
    assert value["prediction"] == pytest.approx(models["regression"].predict([row])[0], rel=1e-5)
    assert value["output"] == pytest.approx(value["prediction"], rel=1e-5)
    assert value["explains"] == "predicted price" and value["top"][0]["name"] == "x"
    with pytest.raises(UserError, match="predicts a number"):
        explain(models["regression"], [row], label="yes")
    (mlp,) = explain(models["mlp"], [row])
    total = sum(c["contribution"] for c in mlp["contributions"])
    assert total == pytest.approx(mlp["output"] - mlp["baseline_output"], abs=0.02)
    assert mlp["output"] == pytest.approx(mlp["probability"], abs=1e-5)


def test_a_class_the_model_does_not_know_is_named_with_the_labels(runs):
    _, models = runs
    with pytest.raises(UserError, match="class 'Pos' is not a label.*Did you mean 'pos'.*Labels: neg, pos"):
        explain(models["text"], ["great"], label="Pos")


def test_the_html_page_shows_each_input_with_its_attributions(runs, tmp_path):
    _, models = runs
    explanations = explain(models["text"], ["Awful   LAMP"])
    assert explanations[0]["text"] == "Awful   LAMP" and explanations[0]["tokens"][1]["start"] == 8
    task = models["text"].task_module
    page = write_html(tmp_path / "why.html", "why", ["a <b>"], explanations, task).read_text()
    assert "a &lt;b&gt;" in page and page.count('class="tok"') == 2
    assert ">Awful</span>   <span" in page and ">LAMP</span>" in page  # the text as given, its tokens shaded


def test_the_report_names_the_words_of_each_class_and_where_the_image_model_looks(runs):
    folder, _ = runs
    words = json.loads((folder / "text" / "metrics.json").read_text())["global_explanation"]["classes"]
    assert words["pos"][0]["word"] == "great" and words["neg"][0]["word"] == "awful"
    report = (folder / "text" / "report.html").read_text()
    assert "Words the model associates with each class" in report
    saliency = json.loads((folder / "image" / "metrics.json").read_text())["global_explanation"]["classes"]
    right = np.array(saliency["right"]["mean"])
    assert right.shape == (8, 8) and right.sum() == pytest.approx(1, abs=1e-3)
    assert right[:, 4:].sum() > right[:, :4].sum()  # the bright half it decides by
    assert "Mean saliency per class" in (folder / "image" / "report.html").read_text()
