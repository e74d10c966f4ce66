"""`POST /v1/predict/batch`: a whole file scored in chunks, streamed back, equal to `foundry predict` on the
same file; bad rows named by row and column; the server's limits."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from e2e_helpers import assert_ok, foundry, png_bytes, table_frame


def ndjson(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    """300 rows of the training table's shape, with its label column (ignored when scoring)."""
    path = tmp_path_factory.mktemp("batch") / "rows.csv"
    table_frame(per_class=100, seed=3).to_csv(path, index=False)
    return path


def test_a_file_of_300_rows_streams_in_chunks_and_equals_foundry_predict(
    client_for, table_run, rows_file, tmp_path
):
    client = client_for(table_run, batch_chunk=64, max_batch_size=16)  # each step queued as 4 pieces
    with rows_file.open("rb") as handle:
        response = client.post(
            "/v1/predict/batch", files={"file": ("rows.csv", handle, "text/csv")}, params={"top_k": 2}
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson(response)
    start, chunks, end = lines[0], lines[1:-1], lines[-1]
    assert start["rows"] == 300
    assert start["notes"] == ["ignored column(s) the model does not read: label"]
    assert start["limits"]["max_rows"] == 100_000
    assert [c["done"] for c in chunks] == [64, 128, 192, 256, 300]  # progress, chunk by chunk
    assert end == {"done": 300, "finished": True}
    assert chunks[0]["rows"][0]["input"] == "1" and chunks[0]["rows"][0]["label"] in ("a", "b", "c")

    cli = foundry(
        "predict",
        table_run.path,
        rows_file,
        "--top-k",
        "2",
        "-o",
        tmp_path / "cli.csv",
        cwd=tmp_path,
        home=table_run.home,
    )
    assert_ok(cli)
    assert "".join(c["csv"] for c in chunks) == (tmp_path / "cli.csv").read_text()

    counted = client.get("/metrics").text  # the file's predictions count like any request's
    assert (
        sum(
            float(line.split()[-1])
            for line in counted.splitlines()
            if line.startswith("foundry_predictions_total")
        )
        == 300
    )
    assert 'foundry_requests_total{route="/v1/predict/batch",status="200"} 1.0' in counted

    as_csv = client.post(
        "/v1/predict/batch",
        files={"file": ("rows.csv", rows_file.read_bytes())},
        params={"format": "csv", "top_k": 2},
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text == (tmp_path / "cli.csv").read_text()


def test_a_bad_cell_is_named_by_its_row_and_column_before_or_after_the_answer_began(client_for, table_run):
    client = client_for(table_run, batch_chunk=64)
    frame = table_frame(per_class=100, seed=3).astype(object)
    frame.loc[9, "x1"] = "ten"  # in the first chunk: a 422 before anything is streamed
    early = client.post("/v1/predict/batch", files={"file": ("rows.csv", frame.to_csv(index=False))})
    assert early.status_code == 422
    assert early.json()["error"]["field"] == "rows.10.x1"
    assert early.json()["error"]["message"].startswith("row 10, column 'x1': 'ten' is not a number")

    frame = table_frame(per_class=100, seed=3).astype(object)
    frame.loc[199, "x2"] = "n/a?"  # row 200, in the fourth chunk: the stream ends with the error
    late = ndjson(client.post("/v1/predict/batch", files={"file": ("rows.csv", frame.to_csv(index=False))}))
    assert late[-1]["done"] == 192
    assert late[-1]["error"]["field"] == "rows.200.x2"
    assert "row 200, column 'x2'" in late[-1]["error"]["message"]
    as_csv = client.post(
        "/v1/predict/batch", files={"file": ("rows.csv", frame.to_csv(index=False))}, params={"format": "csv"}
    ).text.splitlines()
    assert len(as_csv) == 1 + 192 + 1  # the header, the rows scored, then what stopped it
    assert as_csv[-1].startswith("error: rows.200.x2: row 200, column 'x2': 'n/a?' is not a number")


@pytest.mark.parametrize(
    ("name", "content", "settings", "status", "phrase"),
    [
        ("rows.csv", "x1,color\n1,red\n", {}, 422, "rows.csv: missing column(s) 'x2'"),
        ("rows.xlsx", "x1,x2,color\n1,2,red\n", {}, 415, "rows.xlsx: a table model reads .csv"),
        ("rows.csv", "", {}, 422, "rows.csv: the file is empty"),
        ("rows.csv", "x1,x2,color\n", {}, 422, "rows.csv: the table has a header but no data rows"),
        (
            "rows.csv",
            "x1,x2,color\n" + "1,2,red\n" * 11,
            {"max_batch_rows": 10},
            413,
            "the upload holds 11 inputs; the limit is 10",
        ),
        (
            "rows.csv",
            "x1,x2,color\n" + "1,2,red\n" * 100,
            {"max_upload_bytes": 500},
            413,
            "larger than the limit of 500 bytes",
        ),
    ],
)
def test_a_bad_upload_gets_a_4xx_naming_the_file_and_the_fix(
    client_for, table_run, name, content, settings, status, phrase
):
    client = client_for(table_run, **settings)
    response = client.post("/v1/predict/batch", files={"file": (name, content)})
    assert response.status_code == status, response.text
    assert phrase in response.json()["error"]["message"]


def test_an_image_model_scores_a_zip_and_loose_images_in_name_order(client_for, image_run):
    client = client_for(image_run)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("b/dark.png", png_bytes(20))
        zipped.writestr("a/bright.png", png_bytes(230))
        zipped.writestr("__MACOSX/a/._bright.png", b"not an image")
        zipped.writestr("notes.txt", b"skipped")
    response = client.post(
        "/v1/predict/batch",
        files=[("files", ("photos.zip", archive.getvalue())), ("files", ("one.png", png_bytes(230)))],
    )
    assert response.status_code == 200, response.text
    rows = [row for line in ndjson(response)[1:-1] for row in line["rows"]]
    assert [r["input"] for r in rows] == ["photos.zip/a/bright.png", "photos.zip/b/dark.png", "one.png"]
    assert {r["label"] for r in rows} <= {"cat", "dog"}

    broken = client.post(
        "/v1/predict/batch", files=[("files", ("x.png", png_bytes(9))), ("files", ("y.png", b"junk"))]
    )
    assert broken.status_code == 422
    assert broken.json()["error"]["field"] == "rows.2"


def test_a_text_model_scores_a_txt_file_and_a_table_with_its_text_column(client_for, text_run):
    client = client_for(text_run)
    lines = ndjson(
        client.post("/v1/predict/batch", files={"file": ("reviews.txt", "a great film\n\nawful, dull\n")})
    )
    rows = [row for line in lines[1:-1] for row in line["rows"]]
    assert [r["input"] for r in rows] == [
        "a great film",
        "awful, dull",
    ]  # blank lines skipped, as predict does
    assert {r["label"] for r in rows} <= {"positive", "negative"}

    table = "review,stars\nloved it,5\n   ,1\n"
    response = client.post("/v1/predict/batch", files={"file": ("reviews.csv", table)})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "row 2: the text is empty."
