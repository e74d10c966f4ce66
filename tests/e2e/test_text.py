"""Text classification through the real `foundry` CLI and the Python API, on the shipped reviews.

The pretrained family runs once on the real all-MiniLM-L6-v2 (the default a user gets) and
otherwise on a 2-layer BERT folder with the same tokenizer; the models trained from scratch
run with tiny widths.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from e2e_helpers import assert_ok, assert_user_error, cli_env, foundry, one_line

REVIEWS = Path(__file__).parents[2] / "examples" / "tiny" / "reviews.csv"
TINY_FROM_SCRATCH = {
    "lstm": {"embed_dim": 16, "hidden": 16},
    "gru": {"embed_dim": 16, "hidden": 16},
    "transformer": {"width": 16, "depth": 1, "heads": 2},
}
pytestmark = pytest.mark.slow


def text_config(folder: Path, model: dict, **data) -> Path:
    shutil.copy(REVIEWS, folder / "reviews.csv")
    config = {
        "task": "text_classification",
        "data": {
            "source": "reviews.csv",
            "text": "review",
            "label": "sentiment",
            "privacy": {"pii": "redact"},
            "split": {"val": 0.2, "test": 0.2, "seed": 0},
            **data,
        },
        "model": model,
        "train": {"epochs": 4, "batch_size": 16, "optimizer": "adamw", "lr": 0.003, "precision": "fp32"},
    }
    path = folder / "text.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def predict_in_fresh_process(package: Path, texts: list[str], home: Path) -> list[str]:
    """`mf.load(...).predict` in a new interpreter with the hub switched off: the package is all it needs."""
    code = (
        "import json, sys, modelfoundry as mf; "
        "print(json.dumps(mf.load(sys.argv[1]).predict(json.loads(sys.argv[2]))))"
    )
    env = {**cli_env(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(package), json.dumps(texts)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, tiny_bert):
    """A fine-tuned copy of the tiny BERT; the copy is deleted after training to prove the package
    does not need the folder it was trained from."""
    work = tmp_path_factory.mktemp("text")
    encoder = shutil.copytree(tiny_bert, work / "my-encoder")
    config = text_config(work, {"name": "pretrained", "path": "my-encoder"})
    result = foundry(
        "train",
        config,
        "--set",
        "train.lr=0.0005",
        "--set",
        "train.lr_head=0.01",
        "--set",
        "train.schedule=linear",
        "--set",
        "train.warmup=0.1",
        "--run-dir",
        work / "runs" / "text",
        cwd=work,
        home=work / "runs",
    )
    assert_ok(result)
    shutil.rmtree(encoder)
    return work, work / "runs" / "text", result


def test_fine_tuned_text_model_reports_pii_and_text_mistakes(pretrained_run):
    _work, run, result = pretrained_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.5 and len(metrics["history"]) == 4
    report = json.loads((run / "data_report.json").read_text())
    assert report["pii"]["EMAIL"] == 1 and report["pii"]["PHONE"] == 1 and report["pii"]["CARD"] == 1
    assert report["tokens"]["max"] <= 64
    assert sorted(p.name for p in (run / "model").iterdir()) == [
        "encoder",
        "model.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    html = (run / "report.html").read_text()
    assert "EMAIL" in html and "Worst mistakes" in html
    assert "up to 64 tokens per text" in one_line(result.stderr)


def test_predict_texts_from_the_cli_and_from_a_file(pretrained_run):
    work, run, _ = pretrained_run
    result = foundry(
        "predict",
        run,
        "The kettle works perfectly.",
        "It broke after two days.",
        "--top-k",
        "2",
        cwd=work,
        home=work / "runs",
    )
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert "The kettle works perfectly." in lines[1] and "It broke after two days." in lines[2]
    assert all(("positive" in line or "negative" in line) and "positive=" in line for line in lines[1:])
    (work / "texts.txt").write_text("first review\n\nsecond review\n")
    from_file = foundry(
        "predict", run, work / "texts.txt", "-o", work / "out.csv", cwd=work, home=work / "runs"
    )
    assert_ok(from_file)
    assert (work / "out.csv").read_text().splitlines()[0] == "input,label,probability"
    assert len((work / "out.csv").read_text().splitlines()) == 3  # the blank line is no text


def test_package_predicts_offline_in_a_fresh_process_like_the_trained_model(pretrained_run):
    work, run, _ = pretrained_run
    moved = shutil.copytree(run / "model", work / "shipped-model")
    texts = ["Great kettle, email me at ann@example.com", "The lamp arrived damaged.", "fine"]
    in_process = foundry("predict", run, *texts, cwd=work, home=work / "runs")
    assert_ok(in_process)
    expected = [line.split()[-2] for line in in_process.stdout.splitlines()[1:]]
    assert predict_in_fresh_process(moved, texts, work / "runs") == expected


def test_evaluate_a_text_model_on_new_labelled_reviews(pretrained_run):
    work, run, _ = pretrained_run
    (work / "new.csv").write_text("review,sentiment\nworks perfectly,positive\nbroke at once,negative\n")
    result = foundry("evaluate", run, "--data", work / "new.csv", cwd=work, home=work / "runs")
    assert_ok(result)
    (work / "bad.csv").write_text("review,sentiment\nworks perfectly,mixed\n")
    assert_user_error(
        foundry("evaluate", run, "--data", work / "bad.csv", cwd=work, home=work / "runs"),
        "'mixed'",
        "never seen in training",
    )


@pytest.mark.parametrize("name", sorted(TINY_FROM_SCRATCH))
def test_models_from_scratch_train_and_predict(name, tmp_path):
    config = text_config(tmp_path, {"name": name, **TINY_FROM_SCRATCH[name]}, max_length=32)
    result = foundry(
        "train",
        config,
        "--set",
        "train.epochs=15",
        "--set",
        "train.lr=0.01",
        "--run-dir",
        tmp_path / "runs" / name,
        cwd=tmp_path,
        home=tmp_path / "runs",
    )
    assert_ok(result)
    metrics = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.7  # the reviews are easy; chance is 0.5
    predicted = predict_in_fresh_process(
        tmp_path / "runs" / name, ["works perfectly", "broke after two days"], tmp_path / "runs"
    )
    assert set(predicted) <= {"positive", "negative"} and len(predicted) == 2


def test_shipped_reviews_example_fine_tunes_minilm(tmp_path):
    """The default a user gets: examples/reviews.yaml on the real all-MiniLM-L6-v2."""
    example = Path(__file__).parents[2] / "examples" / "reviews.yaml"
    result = foundry(
        "train",
        example,
        "--set",
        "train.epochs=2",
        "--run-dir",
        tmp_path / "run",
        cwd=tmp_path,
        home=tmp_path / "runs",
    )
    assert_ok(result)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.85
    assert "pretrained with 22,566,146 parameters" in one_line(result.stderr)


# ------------------------------------------------------------------------------------ bad input


def test_text_column_missing_suggests_names(tmp_path):
    config = text_config(tmp_path, {"name": "lstm"}, text="reveiw")
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"),
        "text column 'reveiw' not found",
        "Did you mean 'review'?",
    )


def test_all_texts_empty(tmp_path):
    config = text_config(tmp_path, {"name": "lstm"})
    (tmp_path / "reviews.csv").write_text("review,sentiment\n,positive\n  ,negative\n")
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"),
        "every text is empty or whitespace only",
    )


def test_undecodable_bytes_name_the_row(tmp_path):
    config = text_config(tmp_path, {"name": "lstm"})
    (tmp_path / "reviews.csv").write_bytes(b"review,sentiment\ngood,positive\nna\xefve plot,negative\n")
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"),
        "reviews.csv: row 2, line 3",
        "is not valid UTF-8",
    )


def test_model_path_that_is_not_a_hugging_face_folder_names_the_missing_file(tmp_path):
    (tmp_path / "half-model").mkdir()
    (tmp_path / "half-model" / "config.json").write_text("{}")
    config = text_config(tmp_path, {"name": "pretrained", "path": "half-model"})
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"),
        "not a Hugging Face model folder",
        "model.safetensors or pytorch_model.bin",
        "tokenizer.json or vocab.txt missing",
    )


def test_label_only_in_the_test_file(tmp_path):
    (tmp_path / "test.csv").write_text("review,sentiment\nso-so,mixed\ngreat,positive\n")
    config = text_config(tmp_path, {"name": "lstm"}, test_source="test.csv")
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"),
        "test.csv: label(s) 'mixed' never appear in the training file",
    )


def test_max_length_beyond_what_the_model_supports(tmp_path):
    config = text_config(tmp_path, {"name": "pretrained"}, max_length=1024)
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"),
        "data.max_length: 1024 is more than",
        "supports (512 tokens",
        "512 or less",
    )


def test_text_task_without_a_text_column_key(tmp_path):
    config = text_config(tmp_path, {"name": "lstm"})
    raw = yaml.safe_load(config.read_text())
    del raw["data"]["text"]
    config.write_text(yaml.safe_dump(raw))
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"), "text_classification needs data.text"
    )


def test_image_model_for_text(tmp_path):
    config = text_config(tmp_path, {"name": "cnn"})
    assert_user_error(
        foundry("train", config, cwd=tmp_path, home=tmp_path / "runs"),
        "'cnn' is not a model for this data",
        "lstm, pretrained, transformer",
    )


def test_personal_data_is_scrubbed_at_prediction_as_in_training(pretrained_run):
    import numpy as np

    import modelfoundry as mf

    _, run, _ = pretrained_run
    predictor = mf.load(run)
    texts = [
        "mail ann@example.com, it works perfectly",
        "mail bob.smith@corp.example.org, it works perfectly",
        "mail [EMAIL], it works perfectly",
    ]
    probabilities = predictor.predict_proba(texts)
    assert np.allclose(probabilities[0], probabilities[1]) and np.allclose(probabilities[0], probabilities[2])
    assert predictor.predict("one text alone") in (["positive"], ["negative"])


def test_fine_tuned_text_model_exports_to_onnx_and_predicts_the_same(pretrained_run):
    import numpy as np

    import modelfoundry as mf

    work, run, _ = pretrained_run
    copy = shutil.copytree(run, work / "onnx-copy")
    result = foundry("export", copy, cwd=work, home=work / "runs")
    assert_ok(result)
    assert "held-out examples" in one_line(result.stdout)  # the run's own test texts, not made-up ones
    texts = ["The kettle works perfectly.", "It broke after two days and the refund never came.", "ok"]
    onnx = mf.load(copy, backend="onnx")
    assert np.abs(mf.load(copy).predict_proba(texts) - onnx.predict_proba(texts)).max() < 1e-4


def test_served_text_model_keeps_no_personal_data_in_feedback_or_logs(pretrained_run):
    import httpx

    from e2e_helpers import Server

    work, run, _ = pretrained_run
    text = "Write to ann.lee@example.com: the kettle broke after two days"
    with (
        Server(run, cwd=work, home=work / "runs") as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        assert http.get("/v1/model").json()["kind"] == "text"
        answer = http.post("/v1/predict", json={"inputs": [text, "works perfectly"], "top_k": 2}).json()
        assert len(answer["predictions"]) == 2
        stored = http.post("/v1/feedback", json={"request_id": answer["request_id"], "label": "negative"})
        assert stored.status_code == 201, stored.text
        rows = {r["id"]: r for r in http.get("/v1/feedback").json()["feedback"]}
        assert http.post("/v1/predict", json={"inputs": ["   "]}).json()["error"]["field"] == "inputs.0"
        logs = server.stop()
    kept = rows[stored.json()["feedback_id"]]["input"]["text"]
    assert "ann.lee@example.com" not in kept and "[EMAIL]" in kept and "kettle broke" in kept
    assert "ann.lee" not in logs and "kettle" not in logs


def test_fine_tuned_text_model_quantizes_to_int8_and_serves_from_onnx(pretrained_run):
    import modelfoundry as mf

    work, run, _ = pretrained_run
    copy = shutil.copytree(run, work / "runs" / "int8-source")
    result = foundry("compress", copy, "--quantize", "int8", "--no-report", cwd=work, home=work / "runs")
    assert_ok(result)
    assert "int8 (dynamic)" in one_line(result.stdout)
    variant = mf.load(work / "runs" / "int8-source-int8")
    texts = ["The kettle works perfectly.", "It broke after two days and the refund never came."]
    assert variant.backend == "onnx" and variant.predict(texts) == mf.load(copy).predict(texts)
