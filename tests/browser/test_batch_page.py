"""Scoring a whole file on the web page of `foundry serve`, pasting a row into the form, and the page's
layout with many long column names at phone and desktop widths, in headless Chromium against the real
server."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import Trained, require_chromium, train

from e2e_helpers import IMAGE_LABELS, TINY_MLP, assert_ok, foundry, png_bytes, table_frame, write_config

require_chromium()  # skips this module when Debian's chromium is missing

from playwright.sync_api import expect  # noqa: E402  only once the browser is known to be there

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_a_300_row_file_scored_on_the_page_downloads_what_foundry_predict_writes(
    page, table_server, table_model, tmp_path
):
    rows = tmp_path / "customers.csv"
    table_frame(per_class=100, seed=3).to_csv(rows, index=False)  # with its label column, which is ignored
    page.goto(table_server.url)
    expect(page.locator("#batch-limits")).to_contain_text("Up to 100,000 inputs and 100 MB per upload")
    expect(page.locator("#batch-limits")).to_contain_text(".csv")

    page.set_input_files("#batch-input", rows)
    expect(page.locator("#batch-status")).to_have_text("Scored all 300 inputs of customers.csv.")
    assert page.locator("#batch-progress").evaluate("p => [p.value, p.max]") == [300, 300]
    expect(page.locator("#batch-notes")).to_contain_text("ignored column(s) the model does not read: label")
    preview = page.locator("#batch-preview")
    expect(preview.locator("th")).to_have_text(["input", "label", "probability"])
    expect(preview.locator("tbody tr")).to_have_count(10)
    expect(preview.locator("tbody tr").first.locator("td").nth(1)).to_have_text(re.compile("^[abc]$"))

    with page.expect_download() as download:
        page.click("#batch-download")
    assert download.value.suggested_filename == "customers-predictions.csv"
    downloaded = tmp_path / "downloaded.csv"
    download.value.save_as(downloaded)
    cli = foundry(
        "predict", table_model.path, rows, "-o", tmp_path / "cli.csv", cwd=tmp_path, home=table_model.home
    )
    assert_ok(cli)
    assert downloaded.read_text() == (tmp_path / "cli.csv").read_text()
    assert len(pd.read_csv(downloaded)) == 300


def test_a_bad_row_is_named_by_row_and_column_whether_found_before_or_while_streaming(
    page, table_server, tmp_path
):
    page.goto(table_server.url)
    expect(page.locator("#batch-limits")).to_be_visible()
    frame = table_frame(per_class=100, seed=3).astype(object)
    frame.loc[199, "x2"] = "about 3"  # row 200: found in the fourth chunk, after 192 rows were scored
    frame.to_csv(late := tmp_path / "late.csv", index=False)
    page.set_input_files("#batch-input", late)
    error = page.locator("#batch-error")
    expect(error).to_contain_text("row 200, column 'x2': 'about 3' is not a number")
    expect(page.locator("#batch-status")).to_have_text("Stopped after 192 of 300.")
    expect(page.locator("#batch-download")).to_be_hidden()

    pd.DataFrame({"x1": [1.0], "colour": ["red"]}).to_csv(bad := tmp_path / "columns.csv", index=False)
    page.set_input_files("#batch-input", bad)
    expect(error).to_contain_text("columns.csv: missing column(s) 'x2', 'color'.")
    expect(page.locator("#batch-status")).to_have_text("Not scored.")


def test_several_images_and_a_zip_are_scored_on_an_image_models_page(page, image_model, serve, tmp_path):
    page.goto(serve(image_model).url)
    expect(page.locator("#batch-label")).to_have_text("Drop images, or zips of images here, or choose")
    zipped = tmp_path / "more.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("dark.png", png_bytes(30))
    (tmp_path / "bright.png").write_bytes(png_bytes(220))
    page.set_input_files("#batch-input", [tmp_path / "bright.png", zipped])
    expect(page.locator("#batch-status")).to_have_text("Scored all 2 inputs of 2 files.")
    cells = page.locator("#batch-preview tbody tr td:first-child")
    expect(cells).to_have_text(["bright.png", "more.zip/dark.png"])
    expect(page.locator("#batch-preview tbody tr td:nth-child(2)").first).to_have_text(
        re.compile(f"^({'|'.join(IMAGE_LABELS)})$")
    )


def test_a_regression_models_file_shows_the_predicted_values(page, regression_model, serve, tmp_path):
    server = serve(regression_model)
    page.goto(server.url)
    rows = pd.DataFrame(
        {"city": ["north", "south", None], "size": [100, 50.5, 80]}
    )  # a gap, columns reordered
    rows.to_csv(path := tmp_path / "flats.csv", index=False)
    page.set_input_files("#batch-input", path)
    expect(page.locator("#batch-status")).to_have_text("Scored all 3 inputs of flats.csv.")
    expect(page.locator("#batch-preview th")).to_have_text(["input", "prediction"])
    shown = [float(v) for v in page.locator("#batch-preview tbody td.num").all_inner_texts()]
    one_by_one = httpx.post(
        f"{server.url}/v1/predict",
        json={"inputs": rows.astype(object).where(rows.notna(), None).to_dict("records")},
    ).json()["predictions"]
    assert shown == pytest.approx([p["prediction"] for p in one_by_one], rel=1e-5)


def test_a_pasted_csv_row_fills_the_form_and_a_row_that_does_not_fit_says_why(page, table_server):
    page.goto(table_server.url)
    form = page.locator("#table-form")
    page.fill("#paste-row", "6, -2.5, blue")
    page.click("#paste-fill")
    expect(page.locator("#paste-status")).to_have_text("Filled 3 columns.")
    expect(form.get_by_label("x1", exact=True)).to_have_value("6")
    expect(form.get_by_label("color", exact=True)).to_have_value("blue")
    page.click("#predict")
    expect(page.locator("#result-label")).to_have_text(re.compile("^[abc]$"))

    page.fill("#paste-row", 'color,x2,x1\n"green",1.5,0')  # a header line, columns in another order
    page.click("#paste-fill")
    expect(form.get_by_label("x2", exact=True)).to_have_value("1.5")
    expect(form.get_by_label("color", exact=True)).to_have_value("green")

    page.fill("#paste-row", "6,-2.5")
    page.click("#paste-fill")
    expect(page.locator("#paste-status")).to_have_text(
        "Not filled: the row has 2 values; the model takes 3 columns, in this order: x1, x2, color. "
        "Or paste a header line above the row."
    )
    page.fill("#paste-row", "6,-2.5,purple")
    page.click("#paste-fill")
    expect(page.locator("#paste-status")).to_contain_text('column color: "purple" is not a category')
    expect(form.get_by_label("x1", exact=True)).to_have_value("0")  # nothing filled from a row that failed


# 13 numbers and 3 categories with names as long as real exports have them
LONG_NUMBERS = [
    f"average_monthly_{what}_over_the_last_twelve_months_in_euros"
    for what in (
        "spend",
        "refunds",
        "visits",
        "basket",
        "discount",
        "returns",
        "calls",
        "emails",
        "clicks",
        "sessions",
        "orders",
        "reviews",
        "logins",
    )
]
LONG_CATEGORIES = [
    "preferred_contact_channel_as_stated_at_signup",
    "region",
    "customer_segment_label_from_crm",
]


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Trained:
    work = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.normal(size=60).round(2) for name in LONG_NUMBERS})
    for name in LONG_CATEGORIES:
        frame[name] = rng.choice(["email", "phone", "letter"], 60)
    frame["label"] = np.where(frame[LONG_NUMBERS[0]] > 0, "stays", "leaves")
    frame.to_csv(work / "wide.csv", index=False)
    return train(work, write_config(work / "wide.yaml", "tabular_classification", "wide.csv"), *TINY_MLP)


OVERLAPS = """() => {
  const shown = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const items = [...document.querySelectorAll(
    "label, input, select, textarea, button, legend, h1, h2, dt, .chip, progress, a, th, td, #batch-limits")]
    .filter(shown);
  const overlaps = [];
  for (let i = 0; i < items.length; i++) {
    for (let j = i + 1; j < items.length; j++) {
      const [a, b] = [items[i], items[j]];
      if (a.contains(b) || b.contains(a)) continue;
      const [p, q] = [a.getBoundingClientRect(), b.getBoundingClientRect()];
      const x = Math.min(p.right, q.right) - Math.max(p.left, q.left);
      const y = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
      const name = (e) => `${e.tagName} "${e.textContent.slice(0, 30)}"`;
      if (x > 1 && y > 1) overlaps.push(`${name(a)} / ${name(b)}`);
    }
  }
  const cut = [...document.querySelectorAll("#table-form label")]
    .filter((l) => l.scrollWidth > l.clientWidth || l.scrollHeight > l.clientHeight)
    .filter((l) => l.title !== l.textContent)
    .map((l) => l.textContent);
  return { overlaps, cut, pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth };
}"""


@pytest.mark.parametrize("width", [375, 1280])
def test_many_long_column_names_never_overlap_at_phone_and_desktop_widths(
    browser, wide_model, serve, tmp_path, width
):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.goto(serve(wide_model).url)
    groups = page.locator("#table-form fieldset.group legend")
    expect(groups).to_have_text(["Numbers (13)", "Categories (3)"])  # 16 columns: grouped by role
    label = page.locator("#table-form label").first
    expect(label).to_have_attribute("title", LONG_NUMBERS[0])  # the whole name, when the label cuts it short
    rows = tmp_path / "wide.csv"
    frame = pd.DataFrame(
        {name: [0.5] * 12 for name in LONG_NUMBERS} | {n: ["email"] * 12 for n in LONG_CATEGORIES}
    )
    frame.to_csv(rows, index=False)
    page.set_input_files("#batch-input", rows)  # the preview table must not widen the page either
    expect(page.locator("#batch-status")).to_have_text("Scored all 12 inputs of wide.csv.")
    page.fill("#paste-row", "x")
    page.click("#paste-fill")  # a long message under the paste box
    expect(page.locator("#paste-status")).to_contain_text("the row has 1 values")

    folder = Path(os.environ.get("FOUNDRY_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / f"page-{width}px.png", full_page=True)
    found = page.evaluate(OVERLAPS)
    context.close()
    assert found["overlaps"] == [], f"at {width} px these overlap: {found['overlaps']}"
    assert found["cut"] == [], f"at {width} px these labels are cut short without a tooltip: {found['cut']}"
    assert found["pageWidth"] <= found["viewport"], f"at {width} px the page scrolls sideways: {found}"
