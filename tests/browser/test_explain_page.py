"""The page's "Explain" button, in headless Chromium against the real server: after a prediction it shows
why, as the model's kind of input draws it (highlighted tokens, a heat map, a bar per column)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import require_chromium

from e2e_helpers import write_png

require_chromium()  # skips this module when Debian's chromium is missing

from playwright.sync_api import expect  # noqa: E402  only once the browser is known to be there

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_explain_shows_tokens_for_a_text_and_a_bar_per_column_for_a_row(
    page, text_model, table_server, serve
):
    page.goto(serve(text_model).url)
    page.get_by_label("Text").fill("The kettle broke, awful.")
    page.click("#predict")
    expect(page.locator("#result-label")).not_to_be_empty()
    page.click("#explain")
    explanation = page.locator("#explanation")
    expect(explanation).to_be_visible()
    expect(explanation).to_contain_text(re.compile(r"probability of '(positive|negative)'"))
    expect(explanation.locator(".tok")).to_have_text(["The", "kettle", "broke", ",", "awful", "."])
    expect(explanation.locator(".tokens")).to_have_text("The kettle broke, awful.")  # the text as typed

    page.goto(table_server.url)
    form = page.locator("#table-form")
    form.get_by_label("x1", exact=True).fill("6")
    form.get_by_label("x2", exact=True).fill("-2.5")
    form.get_by_label("color", exact=True).select_option("blue")
    page.click("#predict")
    expect(page.locator("#result-label")).not_to_be_empty()
    page.click("#explain")
    bars = page.locator("#explanation [data-column]")
    expect(bars).to_have_count(3)
    assert sorted(bars.evaluate_all("(bars) => bars.map((b) => b.dataset.column)")) == ["color", "x1", "x2"]
    expect(page.locator("#explanation")).to_contain_text("color = blue")


def test_explain_shows_a_heat_map_over_the_image(page, image_model, serve, tmp_path):
    page.goto(serve(image_model).url)
    page.set_input_files("#image-input", write_png(tmp_path / "bright.png", 210, np.random.default_rng(0)))
    page.click("#predict")
    expect(page.locator("#result-label")).not_to_be_empty()
    page.click("#explain")
    heat = page.locator("#explanation img.heatmap")
    expect(heat).to_be_visible()
    expect(heat).to_have_attribute("src", re.compile("^data:image/png;base64,"))
    assert heat.evaluate("(img) => img.naturalWidth") > 128  # the image and its heat map, side by side
