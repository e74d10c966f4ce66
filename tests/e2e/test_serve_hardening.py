"""Serving under hostile or careless input: each test feeds one input of an outside bad-input battery
to the real app (in-process, through Starlette's TestClient, or `foundry serve` itself) and checks the
status and the message a client gets: never a 500 for a bad input, never a bare traceback, and every
answer counted in /metrics.
"""

from __future__ import annotations

import logging

import pytest

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
