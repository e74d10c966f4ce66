"""Explanations through the real CLI and the served API: `foundry explain` prints the top contributions
and writes an HTML page, `POST /v1/explain` answers them as JSON, the report explains its worst mistakes,
and a class the model does not know or an input it cannot take is one message (exit 2, or a 4xx)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e_helpers import assert_ok, b64, foundry, png_bytes

pytestmark = pytest.mark.slow
ROW = {"x1": 6.0, "x2": -2.0, "color": "blue"}


def test_explain_texts_prints_tokens_and_writes_highlighted_html(text_run):
    result = foundry(
        "explain",
        text_run.path,
        "it broke after a week",
        "works great",
        "--json",
        cwd=text_run.home,
        home=text_run.home,
    )
    assert_ok(result)
    answer = json.loads(result.stdout)
    first = answer["explanations"][0]
    assert first["input"] == "it broke after a week" and first["explains"].startswith("probability of ")
    assert [t["token"] for t in first["tokens"]] == ["it", "broke", "after", "a", "week"]  # no [CLS]/[SEP]
    assert abs(first["convergence_delta"]) < 0.05
    page = Path(answer["html"]).read_text()
    assert page.count('class="tok"') == 7 and "works great" in page


def test_explain_a_table_file_names_its_columns(table_run, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("x1,x2,color\n6.0,-2.0,blue\n0.1,0.2,red\n")
    result = foundry("explain", table_run.path, rows, "--top", "3", cwd=tmp_path, home=table_run.home)
    assert_ok(result)
    assert result.stdout.count("probability of") == 2 and "row 2:" in result.stdout
    assert "integrated gradients over the encoded row" in result.stdout and "html:" in result.stdout
    assert {"x1", "x2", "color"} >= {
        line.split()[-1] for line in result.stdout.splitlines() if line.startswith("  ")
    }


def test_the_reports_worst_mistakes_come_with_their_explanation(image_run, text_run, table_run):
    """The tiny models of these runs make mistakes on their test splits; the worst are explained."""
    drawn = [
        (image_run, "the image and its heat map"),
        (text_run, 'class="tok"'),
        (table_run, 'class="bars"'),
    ]
    for run, picture in drawn:
        report = (run.path / "report.html").read_text()
        mistakes = report[report.index('id="mistakes"') :]
        mistakes = mistakes[: mistakes.index("</section>")]
        assert "Showing the" in mistakes and picture in mistakes, run.path
        assert "integrated gradients" in mistakes and "convergence delta" in mistakes


def test_served_explanations_for_rows_and_images_and_their_errors(client_for, table_run, image_run):
    client = client_for(table_run)
    answer = client.post("/v1/explain", json={"inputs": [ROW], "class": "a"}).json()
    (e,) = answer["explanations"]
    assert e["label"] == "a" and {c["column"] for c in e["contributions"]} == {"x1", "x2", "color"}
    assert [c["value"] for c in e["contributions"] if c["column"] == "color"] == ["blue"]
    wrong = client.post("/v1/explain", json={"inputs": [ROW], "class": "z"})
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "class"
    missing = client.post("/v1/explain", json={"inputs": [{"x1": 1.0}]})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "inputs.0"
    assert "missing column(s) 'x2', 'color'" in missing.json()["error"]["message"]
    steps = client.post("/v1/explain", json={"inputs": [ROW], "steps": 1})
    assert steps.status_code == 422 and steps.json()["error"]["field"] == "steps"

    image = client_for(image_run).post("/v1/explain", json={"inputs": [b64(png_bytes(200))]}).json()
    (picture,) = image["explanations"]
    assert len(picture["heatmap"]) == 8 and picture["heatmap_png"].startswith("data:image/png;base64,")
