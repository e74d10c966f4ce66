"""Serving under hostile or careless input: each test feeds one input of an outside bad-input battery
to the real app (in-process, through Starlette's TestClient, or `foundry serve` itself) and checks the
status and the message a client gets: never a 500 for a bad input, never a bare traceback, and every
answer counted in /metrics.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from e2e_helpers import Server, b64, png_bytes

pytestmark = pytest.mark.slow
ROW = {"x1": 0.5, "x2": -0.2, "color": "red"}


def error_of(answer) -> tuple[int, str, str]:
    """(status, field, message) of an error answer, which must be our JSON shape."""
    error = answer.json()["error"]
    return answer.status_code, error["field"], error["message"]


# ------------------------------------------------------------------------------- every answer is counted


def test_a_bug_gets_a_json_500_that_is_counted_and_logged_without_the_input(
    client_for, table_run, monkeypatch, caplog
):
    client = client_for(table_run)

    secret = "secret-5e1f"  # the traceback shows the raising line, not this one

    def broken(x):
        raise RuntimeError(f"could not read {secret}")  # a message that quotes an input

    monkeypatch.setattr(client.app.state.service.served.predictor, "proba", broken)
    caplog.set_level(logging.ERROR, logger="modelfoundry.serve")
    answer = client.post("/v1/predict", json={"inputs": [ROW]})
    status, field, message = error_of(answer)
    assert (status, field) == (500, "server") and "RuntimeError" in message and "bug" in message
    assert "Traceback" not in answer.text
    assert "RuntimeError" in caplog.text and secret not in caplog.text
    metrics = client.get("/metrics").text
    assert 'foundry_requests_total{route="/v1/predict",status="500"} 1.0' in metrics
    assert 'foundry_request_seconds_count{route="/v1/predict",status="500"} 1.0' in metrics
    monkeypatch.undo()
    assert client.post("/v1/predict", json={"inputs": [ROW]}).status_code == 200  # still serving


# ------------------------------------------------------------------------------- bodies


def test_an_oversized_chunked_body_is_a_413_counted_while_it_streams(client_for, table_run):
    client = client_for(table_run, max_body_bytes=1000)

    def chunks():  # no Content-Length: httpx sends a generator chunked
        for _ in range(40):
            yield b'{"inputs": [' + b'{"x1": 0.5, "x2": -0.2, "color": "red"},' * 10

    answer = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert error_of(answer) == (413, "body", "the request body is larger than the limit of 1,000 bytes.")
    assert 'foundry_requests_total{route="/v1/predict",status="413"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize(
    "body,phrase",
    [
        (b'{"inputs": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", "nested too deeply"),
        (b'{"inputs": [{"x1": ' + b"7" * 5000 + b', "x2": 1, "color": "red"}]}', "thousands of digits"),
    ],
    ids=["nested 100,000 deep", "a 5,000-digit number"],
)
def test_json_that_python_cannot_read_is_a_422_in_our_shape(client_for, table_run, body, phrase):
    answer = client_for(table_run).post(
        "/v1/predict", content=body, headers={"content-type": "application/json"}
    )
    status, field, message = error_of(answer)
    assert (status, field) == (422, "body") and phrase in message


# ------------------------------------------------------------------------------- table numbers


def post_raw(client, path: str, text: str):
    """A JSON body as written, for what json.dumps will not write (Infinity, NaN, lone surrogates)."""
    return client.post(path, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    "x1,shown",
    [
        ("1e308", "1e+308"),
        ("3.5e38", "3.5e+38"),
        ("Infinity", "inf"),
        ("-Infinity", "-inf"),
        ("NaN", "nan"),
        ("1" + "0" * 400, "a number of 401 digits"),
        ('"1e999"', "inf"),
    ],
)
def test_numbers_beyond_float32_are_a_422_naming_row_and_column(client_for, table_run, x1, shown):
    client = client_for(table_run)
    answer = post_raw(client, "/v1/predict", f'{{"inputs": [{{"x1": {x1}, "x2": 1, "color": "red"}}]}}')
    assert error_of(answer) == (
        422,
        "inputs.0.x1",
        (
            f"{shown} is not a finite number within ±3.4e38 (float32, what the model computes in); "
            "send a finite number, or null for a missing value."
        ),
    )
    assert client.post("/v1/predict", json={"inputs": [ROW]}).status_code == 200  # still serving


def test_a_number_that_standardises_out_of_float32_is_a_422_naming_it(client_for, table_run, monkeypatch):
    client = client_for(table_run)
    x2 = client.app.state.service.served.predictor.spec["preprocessing"]["columns"][1]
    monkeypatch.setitem(x2, "std", 0.01)  # a column whose training values hardly varied
    answer = client.post("/v1/predict", json={"inputs": [ROW, {**ROW, "x2": 3e38}]})
    status, field, message = error_of(answer)
    assert (status, field) == (422, "inputs.1.x2") and "3e+38 is too far from the numbers" in message


def test_a_model_output_of_nan_is_a_422_not_a_broken_json_answer(client_for, table_run, monkeypatch):
    client = client_for(table_run)
    monkeypatch.setattr(
        client.app.state.service.served.predictor, "proba", lambda x: np.full((len(x), 3), np.nan)
    )
    status, field, message = error_of(client.post("/v1/predict", json={"inputs": [ROW]}))
    assert (status, field) == (422, "inputs.0") and "not a finite number (NaN or infinity)" in message


def test_numbers_sent_as_strings_are_read_as_numbers(client_for, table_run):
    client = client_for(table_run)
    as_numbers = client.post("/v1/predict", json={"inputs": [ROW], "top_k": 3}).json()["predictions"]
    as_strings = client.post(
        "/v1/predict", json={"inputs": [{**ROW, "x1": "0.5", "x2": " -2e-1 "}], "top_k": 3}
    ).json()
    assert as_strings["predictions"] == as_numbers
    stored = client.post("/v1/feedback", json={"request_id": as_strings["request_id"], "label": "b"})
    row = {r["id"]: r for r in client.get("/v1/feedback").json()["feedback"]}[stored.json()["feedback_id"]]
    assert row["input"]["row"] == {**ROW, "x2": -0.2}  # kept as numbers, as retraining reads them
    assert "numeric string" in json.dumps(client.get("/openapi.json").json()["paths"]["/v1/predict"])
    for text in ("tall", "", "nan", "1_000", "0x1f", "\u0661\u0662"):
        status, field, message = error_of(client.post("/v1/predict", json={"inputs": [{**ROW, "x1": text}]}))
        assert (status, field) == (422, "inputs.0.x1") and f"{text!r} is not a number" in message


# ------------------------------------------------------------------------------- any string JSON can carry


def test_a_lone_surrogate_in_a_text_becomes_a_replacement_character(client_for, text_run):
    client = client_for(text_run)
    answer = post_raw(client, "/v1/predict", '{"inputs": ["\\ud800 a great film", "\\ud83d\\ude00 ok"]}')
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 2
    stored = post_raw(client, "/v1/feedback", '{"input": "a dull film \\udfff", "label": "negative"}')
    assert stored.status_code == 201, stored.text
    rows = {r["id"]: r for r in client.get("/v1/feedback").json()["feedback"]}
    assert rows[stored.json()["feedback_id"]]["input"] == {"text": "a dull film \ufffd"}


def test_a_lone_surrogate_in_a_table_cell_is_a_replacement_character_too(client_for, table_run):
    client = client_for(table_run)
    answer = post_raw(
        client, "/v1/feedback", '{"input": {"x1": 1, "x2": 2, "color": "r\\ud800"}, "label": "a"}'
    )
    assert answer.status_code == 201, answer.text
    rows = {r["id"]: r for r in client.get("/v1/feedback").json()["feedback"]}
    assert rows[answer.json()["feedback_id"]]["input"]["row"]["color"] == "r\ufffd"


# ------------------------------------------------------------------------------- image sizes


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels but holds only a few bytes of them: what a
    decompression bomb looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [5000, 10_000, 20_000, 65_535])
def test_a_large_image_is_a_413_saying_its_size_whatever_pillow_thinks(client_for, image_run, side):
    client = client_for(image_run)
    answer = client.post("/v1/predict", json={"inputs": [b64(png_header(side, side))]})
    assert error_of(answer) == (
        413,
        "inputs.0",
        f"the image is {side}x{side} pixels; the limit is 16,777,216 pixels. Send a smaller image.",
    )


def test_the_pixels_of_all_images_of_a_request_are_bounded_before_decoding(client_for, image_run):
    client = client_for(image_run)
    sixteen_megapixels = b64(png_header(4000, 4000))  # each one under the per-image limit
    answer = client.post("/v1/predict", json={"inputs": [sixteen_megapixels] * 5})
    assert error_of(answer) == (
        413,
        "inputs",
        (
            "the 5 images are 80,000,000 pixels in all; the limit per request is 67,108,864 pixels. "
            "Send fewer or smaller images in one request."
        ),
    )
    uploads = [("files", (f"{i}.png", png_bytes(size=8), "image/png")) for i in range(4)]
    small = client_for(image_run, max_request_pixels=200).post("/v1/predict/file", files=uploads)
    status, field, message = error_of(small)
    assert (status, field) == (413, "files") and "the 4 images are 256 pixels in all" in message


# ------------------------------------------------------------------------------- feedback


def stored_rows(client) -> dict[int, dict]:
    return {r["id"]: r for r in client.get("/v1/feedback", params={"limit": 10_000}).json()["feedback"]}


def test_correcting_the_same_input_again_replaces_the_first_correction(client_for, table_run):
    client = client_for(table_run)
    request_id = client.post("/v1/predict", json={"inputs": [ROW, ROW]}).json()["request_id"]
    first = client.post("/v1/feedback", json={"request_id": request_id, "index": 0, "label": "b"})
    again = client.post("/v1/feedback", json={"request_id": request_id, "index": 0, "label": "c"})
    other = client.post("/v1/feedback", json={"request_id": request_id, "index": 1, "label": "b"})
    assert (first.status_code, first.json()["replaced"]) == (201, False)
    assert (again.status_code, again.json()["replaced"]) == (200, True)
    assert again.json()["feedback_id"] == first.json()["feedback_id"] != other.json()["feedback_id"]
    rows = [r for r in stored_rows(client).values() if r["request_id"] == request_id]
    assert sorted(r["label"] for r in rows) == ["b", "c"]  # one row per input, the last label kept

    with ThreadPoolExecutor(4) as pool:  # the same correction sent at once, as by a client retrying
        answers = list(
            pool.map(
                lambda _: client.post(
                    "/v1/feedback", json={"request_id": request_id, "index": 1, "label": "a"}
                ),
                range(4),
            )
        )
    assert {a.json()["feedback_id"] for a in answers} == {other.json()["feedback_id"]}
    assert len([r for r in stored_rows(client).values() if r["request_id"] == request_id]) == 2


def test_predicted_sent_with_an_input_is_checked_like_a_label(client_for, table_run):
    client = client_for(table_run)
    body = {"input": ROW, "label": "a"}
    for predicted in ("zebra", "jane@example.com", 3.5):
        status, field, message = error_of(client.post("/v1/feedback", json={**body, "predicted": predicted}))
        assert (status, field) == (422, "predicted") and "is not a label of this model" in message
    stored = client.post("/v1/feedback", json={**body, "predicted": "b"})
    assert stored.status_code == 201 and stored_rows(client)[stored.json()["feedback_id"]]["predicted"] == "b"


def test_stored_feedback_needs_the_key_or_this_machine(client_for, table_run, caplog):
    caplog.set_level(logging.INFO, logger="modelfoundry.serve")
    local = client_for(table_run)
    assert "stored feedback (GET /v1/feedback) and admin routes answer only this machine" in caplog.text
    remote = TestClient(local.app, client=("203.0.113.7", 40000))
    assert local.get("/v1/feedback").status_code == 200
    status, field, message = error_of(remote.get("/v1/feedback"))
    assert (status, field) == (403, "X-API-Key") and "answers only this machine" in message
    assert (
        remote.post("/v1/feedback", json={"input": ROW, "label": "a"}).status_code == 201
    )  # sending is open

    keyed = TestClient(client_for(table_run, api_key="s3cret").app, client=("203.0.113.7", 40000))
    assert error_of(keyed.get("/v1/feedback"))[:2] == (401, "X-API-Key")
    assert keyed.get("/v1/feedback", headers={"X-API-Key": "s3cret"}).status_code == 200


# ------------------------------------------------------------------------------- Host header


def test_a_host_header_naming_another_server_is_a_400(client_for, table_run):
    client = client_for(table_run)
    status, field, message = error_of(client.get("/v1/model", headers={"host": "rebound.example:8000"}))
    assert (status, field) == (400, "Host")
    assert "'rebound.example', which is not a name of this server" in message
    assert "--allowed-host rebound.example" in message
    for host in ("127.0.0.1:8000", "LOCALHOST", "[::1]:8000", "localhost."):
        assert client.get("/v1/model", headers={"host": host}).status_code == 200, host
    assert 'foundry_requests_total{route="bad_host",status="400"} 1.0' in client.get("/metrics").text

    wildcard = client_for(table_run, allowed_hosts=["*.example.com"])
    assert wildcard.get("/v1/model", headers={"host": "api.example.com"}).status_code == 200
    assert wildcard.get("/v1/model", headers={"host": "example.com.evil"}).status_code == 400


def test_foundry_serve_says_who_may_call_and_refuses_foreign_hosts(table_run, tmp_path):
    with Server(
        table_run.path, "--allowed-host", "models.internal", cwd=tmp_path, home=table_run.home
    ) as server:
        assert "no --api-key" in server.banner and "answer only this machine" in server.banner
        assert "accepting the Host names" in server.banner and "models.internal" in server.banner
        refused = httpx.get(f"{server.url}/v1/model", headers={"Host": "rebound.example"})
        assert error_of(refused)[:2] == (400, "Host")
        assert httpx.get(f"{server.url}/v1/model", headers={"Host": "models.internal:80"}).status_code == 200
        assert httpx.get(f"{server.url}/v1/model").status_code == 200
