"""Serving a packaged model: the JSON API, its limits and error answers, metrics, and the real
`foundry serve` process (feedback that survives a kill, an alias that moves under a running server).

Most API tests call the real app in-process through Starlette's TestClient (no sockets, same code);
the tests about processes start `foundry serve` itself.
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

import modelfoundry as mf
from e2e_helpers import Server, assert_ok, b64, foundry, png_bytes

pytestmark = pytest.mark.slow
ROW = {"x1": 0.5, "x2": -0.2, "color": "red"}


# ------------------------------------------------------------------------------- what works


def test_model_card_and_table_predictions_match_the_package(client_for, table_run):
    client = client_for(table_run)
    card = client.get("/v1/model").json()
    assert card["kind"] == "table" and card["labels"] == ["a", "b", "c"] and card["version"].startswith("v")
    assert [c["name"] for c in card["columns"]] == ["x1", "x2", "color"]
    assert card["metrics"]["test_accuracy"] is not None

    rows = [ROW, {"x1": 6.0, "x2": -2.0, "color": "blue"}]
    answer = client.post("/v1/predict", json={"inputs": rows, "top_k": 3}).json()
    expected = mf.load(table_run.path).predict_proba(rows)
    assert answer["model_version"] == card["version"] and len(answer["request_id"]) >= 16
    for prediction, p in zip(answer["predictions"], expected):
        assert prediction["label"] == ["a", "b", "c"][p.argmax()]
        assert sum(t["probability"] for t in prediction["top_k"]) == pytest.approx(1, abs=1e-4)
        assert prediction["top_k"][0]["probability"] == pytest.approx(p.max(), abs=1e-5)


def test_images_as_base64_data_url_and_file_upload_agree(client_for, image_run):
    client = client_for(image_run)
    bright, dark = png_bytes(210), png_bytes(70)
    expected = mf.load(image_run.path).predict([Image.open(io.BytesIO(bright)), Image.open(io.BytesIO(dark))])
    by_json = client.post(
        "/v1/predict", json={"inputs": [b64(bright), "data:image/png;base64," + b64(dark)]}
    ).json()
    by_file = client.post(
        "/v1/predict/file",
        files=[("files", ("a.png", bright, "image/png")), ("files", ("b.png", dark, "image/png"))],
    ).json()
    assert [p["label"] for p in by_json["predictions"]] == expected
    assert [p["label"] for p in by_file["predictions"]] == expected


def test_feedback_by_request_id_is_stored_with_what_the_model_said(client_for, image_run):
    client = client_for(image_run)
    answer = client.post("/v1/predict", json={"inputs": [b64(png_bytes(90))]}).json()
    predicted = answer["predictions"][0]["label"]
    correct = "dog" if predicted == "cat" else "cat"
    stored = client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": correct})
    assert stored.status_code == 201 and stored.json()["predicted"] == predicted
    rows = {r["id"]: r for r in client.get("/v1/feedback", params={"limit": 1000}).json()["feedback"]}
    row = rows[stored.json()["feedback_id"]]
    assert (
        row["label"] == correct
        and row["predicted"] == predicted
        and row["model_version"] == answer["model_version"]
    )
    with Image.open(row["input"]["image"]) as kept:  # the original upload, kept beside the database
        assert kept.size == (8, 8)


def test_health_readiness_docs_and_metrics(client_for, table_run):
    client = client_for(table_run)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert {"/v1/predict", "/v1/predict/file", "/v1/feedback", "/v1/model", "/v1/admin/reload"} <= set(
        client.get("/openapi.json").json()["paths"]
    )
    for _ in range(3):
        client.post("/v1/predict", json={"inputs": [ROW]})
    client.post("/v1/predict", json={"inputs": []})
    metrics = client.get("/metrics").text
    assert 'foundry_requests_total{route="/v1/predict",status="200"} 3.0' in metrics
    assert 'foundry_requests_total{route="/v1/predict",status="422"} 1.0' in metrics
    assert 'foundry_request_seconds_bucket{le="0.5",route="/v1/predict",status="200"} 3.0' in metrics
    assert "foundry_batch_size_count 3.0" in metrics and "foundry_queue_depth 0.0" in metrics
    assert (
        sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("foundry_predictions_total{")
        )
        == 3
    )


def test_the_page_is_served_at_the_root(client_for, table_run):
    page = client_for(table_run).get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_inputs_never_reach_the_logs(client_for, table_run, caplog):
    client = client_for(table_run)
    caplog.set_level(logging.DEBUG)
    client.post("/v1/predict", json={"inputs": [{**ROW, "color": "secret-7f3a"}]})
    client.post("/v1/feedback", json={"input": {**ROW, "color": "secret-7f3a"}, "label": "a"})
    assert "secret-7f3a" not in caplog.text


def test_cors_is_closed_unless_an_origin_is_configured(client_for, table_run):
    origin = {"Origin": "https://app.example.com"}
    assert "access-control-allow-origin" not in client_for(table_run).get("/v1/model", headers=origin).headers
    opened = client_for(table_run, cors_origins=["https://app.example.com"])
    assert (
        opened.get("/v1/model", headers=origin).headers["access-control-allow-origin"]
        == "https://app.example.com"
    )


# ------------------------------------------------------------------------------- bad input

BAD_TABLE_REQUESTS = [
    # (what, request, status, field, phrase in the message)
    (
        "malformed JSON",
        {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}},
        400,
        "body",
        "not valid JSON",
    ),
    ("inputs not a list", {"json": {"inputs": "x1=1"}}, 422, "inputs", "valid list"),
    ("top_k not a number", {"json": {"inputs": [ROW], "top_k": "all"}}, 422, "top_k", "integer"),
    ("empty list", {"json": {"inputs": []}}, 422, "inputs", "empty"),
    ("too many inputs", {"json": {"inputs": [ROW] * 65}}, 413, "inputs", "limit is 64"),
    (
        "a row that is not an object",
        {"json": {"inputs": [[0.5, -0.2, "red"]]}},
        422,
        "inputs.0",
        "column -> value",
    ),
    (
        "missing column",
        {"json": {"inputs": [{"x1": 1, "x2": 2}]}},
        422,
        "inputs.0",
        "missing column(s) 'color'",
    ),
    (
        "extra column",
        {"json": {"inputs": [{**ROW, "colour": "red"}]}},
        422,
        "inputs.0",
        "unknown column(s) 'colour'",
    ),
    (
        "text in a number column",
        {"json": {"inputs": [{**ROW, "x1": "tall"}]}},
        422,
        "inputs.0.x1",
        "not a number",
    ),
]


@pytest.mark.parametrize(
    "what,request_kwargs,status,field,phrase", BAD_TABLE_REQUESTS, ids=[b[0] for b in BAD_TABLE_REQUESTS]
)
def test_bad_predict_requests_get_a_4xx_naming_the_field(
    client_for, table_run, what, request_kwargs, status, field, phrase
):
    client = client_for(table_run)
    answer = client.post("/v1/predict", **request_kwargs)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["field"] == field and phrase in answer.json()["error"]["message"]
    assert client.post("/v1/predict", json={"inputs": [ROW]}).status_code == 200  # still serving


def test_oversized_body_is_refused_before_it_is_read(client_for, table_run):
    client = client_for(table_run, max_body_bytes=1000)
    answer = client.post("/v1/predict", json={"inputs": [ROW] * 40})
    assert (
        answer.status_code == 413
        and "larger than the limit of 1,000 bytes" in answer.json()["error"]["message"]
    )


@pytest.mark.parametrize(
    "what,payload,field,phrase",
    [
        ("not base64", {"json": {"inputs": ["%%% not base64 %%%"]}}, "inputs.0", "not valid base64"),
        (
            "bytes that are no image",
            {"json": {"inputs": [b64(b"GIF89a but then nothing")]}},
            "inputs.0",
            "image",
        ),
        ("a number instead of an image", {"json": {"inputs": [42]}}, "inputs.0", "base64 strings"),
        (
            "an upload that is not an image",
            {"files": [("files", ("notes.txt", b"hello", "text/plain"))]},
            "files.0",
            "not an image",
        ),
    ],
)
def test_corrupt_images_are_refused(client_for, image_run, what, payload, field, phrase):
    client = client_for(image_run)
    answer = client.post("/v1/predict/file" if "files" in payload else "/v1/predict", **payload)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field
    assert phrase in answer.json()["error"]["message"]


def test_decompression_bombs_are_refused_before_decoding(client_for, image_run):
    client = client_for(image_run, max_image_pixels=10_000)
    answer = client.post("/v1/predict", json={"inputs": [b64(png_bytes(size=101))]})  # 10,201 pixels
    assert answer.status_code == 413 and "101x101 pixels" in answer.json()["error"]["message"]


def test_feedback_mistakes(client_for, table_run):
    client = client_for(table_run)
    request_id = client.post("/v1/predict", json={"inputs": [ROW]}).json()["request_id"]
    cases = [
        ({"request_id": request_id, "label": "A"}, 422, "label", "Did you mean 'a'"),
        ({"request_id": "0123456789abcdef", "label": "a"}, 404, "request_id", "no recent prediction"),
        ({"request_id": request_id, "index": 3, "label": "a"}, 422, "index", "had 1 input"),
        ({"label": "a"}, 422, "request_id", "give the request_id"),
        ({"input": {"x1": 1}, "label": "a"}, 422, "input", "missing column"),
        ({"request_id": request_id}, 422, "label", "Field required"),
    ]
    for body, status, field, phrase in cases:
        answer = client.post("/v1/feedback", json=body)
        assert answer.status_code == status and answer.json()["error"]["field"] == field, (body, answer.text)
        assert phrase in answer.json()["error"]["message"], (body, answer.text)


def test_a_classifier_answers_the_openai_routes_with_a_404_in_openais_shape(client_for, table_run):
    client = client_for(table_run)
    answer = client.post("/v1/completions", json={"prompt": "hello"})
    error = answer.json()["error"]
    assert (
        answer.status_code == 404 and error["param"] == "model" and error["type"] == "invalid_request_error"
    )
    assert "does not generate text" in error["message"] and "/v1/predict" in error["message"]


def test_api_key_guards_feedback_and_admin_but_not_predictions(client_for, table_run):
    client = client_for(table_run, api_key="s3cret")
    assert client.get("/v1/model").json()["feedback_requires_key"] is True
    request_id = client.post("/v1/predict", json={"inputs": [ROW]}).json()["request_id"]
    body = {"request_id": request_id, "label": "b"}
    missing = client.post("/v1/feedback", json=body)
    wrong = client.post("/v1/feedback", json=body, headers={"X-API-Key": "guess"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert (
        "X-API-Key header" in missing.json()["error"]["message"]
        and "wrong" in wrong.json()["error"]["message"]
    )
    assert client.post("/v1/admin/reload").status_code == 401
    assert client.get("/v1/feedback").status_code == 401
    assert client.post("/v1/feedback", json=body, headers={"X-API-Key": "s3cret"}).status_code == 201
    bearer = client.post("/v1/feedback", json=body, headers={"Authorization": "Bearer s3cret"})
    assert bearer.status_code == 200 and bearer.json()["replaced"]  # as OpenAI's clients send a key
    assert (
        client.post("/v1/feedback", json=body, headers={"Authorization": "Bearer guess"}).status_code == 401
    )
    assert client.post("/v1/admin/reload", headers={"X-API-Key": "s3cret"}).json()["reloaded"] is True


# ------------------------------------------------------------------------------- the real server


def test_concurrent_feedback_survives_a_killed_server(table_run, tmp_path):
    home = table_run.home
    with Server(table_run.path, cwd=tmp_path, home=home) as server:

        def send(i: int) -> int:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                answer = http.post("/v1/predict", json={"inputs": [{**ROW, "x1": i / 10}]}).json()
                stored = http.post(
                    "/v1/feedback", json={"request_id": answer["request_id"], "label": "abc"[i % 3]}
                )
                assert stored.status_code == 201, stored.text
                return stored.json()["feedback_id"]

        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(send, range(96)))
        server.kill()
    assert len(set(ids)) == 96
    with Server(table_run.path, cwd=tmp_path, home=home) as restarted:
        kept = {
            r["id"]: r
            for r in httpx.get(f"{restarted.url}/v1/feedback", params={"limit": 10_000}).json()["feedback"]
        }
    assert set(ids) <= set(kept)
    assert [kept[i]["label"] for i in ids] == ["abc"[i % 3] for i in range(96)]
    assert [kept[i]["input"]["row"]["x1"] for i in ids] == [i / 10 for i in range(96)]
    export = tmp_path / "feedback.jsonl"
    assert_ok(foundry("feedback", "export", export, cwd=tmp_path, home=home))
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    assert set(ids) <= {r["id"] for r in exported}
    listed = foundry("feedback", "list", "--limit", "5", cwd=tmp_path, home=home)
    assert_ok(listed)
    assert str(max(ids)) in listed.stdout


def test_serving_an_unknown_alias_names_the_known_ones(table_run, tmp_path):
    result = foundry("serve", "champoin", cwd=tmp_path, home=table_run.home)
    assert result.returncode == 2 and "neither an alias" in result.stderr and "Traceback" not in result.stderr


def test_another_precision_for_a_classifier_is_refused_by_name(table_run, monkeypatch):
    from modelfoundry.errors import UserError
    from modelfoundry.serve.service import load_served

    monkeypatch.setenv("FOUNDRY_HOME", str(table_run.home))
    with pytest.raises(
        UserError, match=r"--precision bf16: only a text generation model .* Leave --precision out"
    ):
        load_served(str(table_run.path), precision="bf16")
