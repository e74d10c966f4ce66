"""The web page of `foundry serve`, driven in headless Chromium against the real server: what a
user sees after loading the page, predicting, and sending a correction, for each input kind.
"""

from __future__ import annotations

import base64
import json
import re

import httpx
import numpy as np
import pytest
from conftest import require_chromium

from e2e_helpers import IMAGE_LABELS, TABLE_LABELS, write_png

require_chromium()  # skips this module when Debian's chromium is missing

from playwright.sync_api import expect  # noqa: E402  only once the browser is known to be there

pytestmark = [pytest.mark.browser, pytest.mark.slow]
BARS = "#probabilities [data-label]"


def shown_probabilities(page) -> dict[str, float]:
    """data-label -> the percentage written on its bar, in the order shown."""
    bars = page.locator(BARS)
    return {
        bar.get_attribute("data-label"): float(re.search(r"([\d.]+)%", bar.inner_text()).group(1))
        for bar in bars.all()
    }


def drop_file(page, content: bytes, name: str, mime: str) -> None:
    """Drag and drop a file onto the drop zone, as from a file manager."""
    files = page.evaluate_handle(
        """([b64, name, mime]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: mime}));
        return transfer;
    }""",
        [base64.b64encode(content).decode(), name, mime],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": files})


def test_table_model_card_prediction_and_correction_that_is_stored(page, table_server):
    page.goto(table_server.url)
    card = page.locator("#model-card")
    expect(card).to_contain_text("tabular_classification")
    expect(card).to_contain_text(re.compile(r"Version\s*v\d+"))
    expect(card).to_contain_text(re.compile(r"Test accuracy\s*[\d.]+%"))
    expect(card.locator(".chip")).to_have_text(list(TABLE_LABELS))

    form = page.locator("#table-form")
    form.get_by_label("x1", exact=True).fill("6")
    form.get_by_label("x2", exact=True).fill("-2.5")
    form.get_by_label("color", exact=True).select_option("blue")
    page.click("#predict")

    expect(page.locator(BARS)).to_have_count(len(TABLE_LABELS))
    predicted = page.locator("#result-label").inner_text()
    shown = shown_probabilities(page)
    assert set(shown) == set(TABLE_LABELS) and predicted == next(iter(shown))
    assert list(shown.values()) == sorted(shown.values(), reverse=True)
    assert sum(shown.values()) == pytest.approx(100, abs=0.3)  # each rounded to 0.1
    expect(page.locator("#result")).to_contain_text(re.compile(r"model v\d+"))

    correct = next(label for label in TABLE_LABELS if label != predicted)
    page.select_option("#correct-label", correct)
    page.click("#send-feedback")
    status = page.locator("#feedback-status")
    expect(status).to_have_text(re.compile(r"Thanks — saved as feedback #\d+"))
    feedback_id = int(re.search(r"#(\d+)", status.inner_text()).group(1))

    listed = httpx.get(f"{table_server.url}/v1/feedback").json()["feedback"]
    stored = {r["id"]: r for r in listed}[feedback_id]
    assert (stored["label"], stored["predicted"]) == (correct, predicted)
    assert stored["input"]["row"] == {"x1": 6, "x2": -2.5, "color": "blue"}  # numbers sent as JSON numbers


def test_image_upload_and_drop_predict_and_a_bad_file_shows_the_servers_message(
    page, image_model, serve, tmp_path
):
    page.goto(serve(image_model).url)
    expect(page.locator("#model-card")).to_contain_text("image_classification")
    page.set_input_files("#image-input", write_png(tmp_path / "bright.png", 210, np.random.default_rng(0)))
    expect(page.locator("#image-preview")).to_be_visible()
    page.click("#predict")
    expect(page.locator("#result-label")).to_have_text(re.compile(f"^({'|'.join(IMAGE_LABELS)})$"))
    expect(page.locator(BARS)).to_have_count(len(IMAGE_LABELS))
    expect(page.locator("#error")).to_be_hidden()

    dark = write_png(tmp_path / "dark.png", 60, np.random.default_rng(1)).read_bytes()
    drop_file(page, dark, "dark.png", "image/png")
    preview = page.locator("#image-preview")
    expect(preview).to_have_attribute("src", f"data:image/png;base64,{base64.b64encode(dark).decode()}")
    page.click("#predict")
    expect(page.locator("#result-label")).to_have_text(re.compile(f"^({'|'.join(IMAGE_LABELS)})$"))

    drop_file(page, b"these bytes are not a PNG image", "broken.png", "image/png")
    expect(preview).to_have_attribute("src", re.compile("^data:image/png;base64,dGhlc2"))  # "these..."
    page.click("#predict")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("inputs.0")
    expect(error).to_contain_text("not an image")


def test_feedback_needs_the_api_key_the_server_was_started_with(page, table_model, serve):
    server = serve(table_model, "--api-key", "secret")
    page.goto(server.url)
    form = page.locator("#table-form")
    form.get_by_label("x1", exact=True).fill("0.5")
    form.get_by_label("x2", exact=True).fill("0")
    page.click("#predict")
    expect(page.locator("#result-label")).not_to_be_empty()

    status = page.locator("#feedback-status")
    page.click("#send-feedback")
    expect(status).to_contain_text("this route needs an API key")
    page.fill("#api-key", "not-the-key")
    page.click("#send-feedback")
    expect(status).to_contain_text("the API key is wrong")
    page.fill("#api-key", "secret")
    page.click("#send-feedback")
    expect(status).to_have_text(re.compile(r"Thanks — saved as feedback #\d+"))

    page.reload()  # the key is remembered in this browser
    expect(page.locator("#api-key")).to_have_value("secret")


def test_text_model_predicts_a_typed_review(page, text_model, serve):
    page.goto(serve(text_model).url)
    expect(page.locator("#model-card")).to_contain_text("text_classification")
    page.click("#predict")  # nothing typed yet: the page says so instead of calling the server
    expect(page.locator("#error")).to_contain_text("type a text first")
    page.get_by_label("Text").fill("The kettle works great, excellent value.")
    page.click("#predict")
    expect(page.locator("#result-label")).to_have_text(re.compile("^(positive|negative)$"))
    expect(page.locator(BARS)).to_have_count(2)
    expect(page.locator("#error")).to_be_hidden()


def test_a_model_card_error_shows_the_servers_message_not_a_blank_page(page, table_server):
    error = {"error": {"field": "model", "message": "could not load champion: no such alias."}}
    page.route(
        "**/v1/model",
        lambda route: route.fulfill(status=409, content_type="application/json", body=json.dumps(error)),
    )
    page.goto(table_server.url)
    expect(page.locator("#error")).to_have_text("Error: model: could not load champion: no such alias.")
    expect(page.locator("#model-card")).to_contain_text("could not be loaded")
    expect(page.locator("#predict")).to_be_disabled()


def test_regression_model_shows_the_number_and_takes_a_corrected_number(page, regression_model, serve):
    server = serve(regression_model)
    page.goto(server.url)
    card = page.locator("#model-card")
    expect(card).to_contain_text("tabular_regression")
    expect(card).to_contain_text(re.compile(r"Test RMSE\s*[\d,.]+"))
    expect(card).to_contain_text("a number: price")
    expect(card.locator(".chip")).to_have_count(0)  # no labels to list

    form = page.locator("#table-form")
    form.get_by_label("size", exact=True).fill("100")
    form.get_by_label("city", exact=True).select_option("north")
    page.click("#predict")
    expect(page.locator("#result-label")).to_have_text(re.compile(r"^[\d,.]+$"))
    shown = float(page.locator("#result-label").inner_text().replace(",", ""))
    expected = httpx.post(
        f"{server.url}/v1/predict", json={"inputs": [{"size": 100, "city": "north"}]}
    ).json()
    assert shown == pytest.approx(expected["predictions"][0]["prediction"], rel=1e-4)
    expect(page.locator(BARS)).to_have_count(0)  # no probability bars for a number
    expect(page.locator("#correct-label")).to_be_hidden()

    correct_value = page.locator("#correct-value")
    expect(correct_value).to_be_visible()
    correct_value.fill("")
    page.click("#send-feedback")
    expect(page.locator("#feedback-status")).to_have_text("Not saved: type the right number first.")
    correct_value.fill("4321.5")
    page.click("#send-feedback")
    status = page.locator("#feedback-status")
    expect(status).to_have_text(re.compile(r"Thanks — saved as feedback #\d+"))
    feedback_id = int(re.search(r"#(\d+)", status.inner_text()).group(1))
    stored = {r["id"]: r for r in httpx.get(f"{server.url}/v1/feedback").json()["feedback"]}[feedback_id]
    assert float(stored["label"]) == 4321.5
    assert stored["input"]["row"] == {"size": 100, "city": "north"}
