"""Column roles of tables: inferred from the training rows, listed in the data report, the useless ones
dropped with a warning naming the column and why; data.columns overrides, the same for read-whole and
streamed tables; bad columns, roles and labels stop with one message naming the column and the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelfoundry.config import load_config
from modelfoundry.data.prepare import prepare
from modelfoundry.data.roles import ROLES
from modelfoundry.errors import UserError

ROWS = 60


def people(rows: int = ROWS) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    label = np.array(["yes", "no"])[rng.integers(0, 2, rows)]
    return pd.DataFrame(
        {
            "customer": [f"C{i:05d}" for i in rng.permutation(rows)],  # unique strings: an id
            "row": np.arange(rows) + 1000,  # a counter
            "site": rng.choice(["north", "south", "east"], rows),
            "age": rng.integers(18, 80, rows),  # integers with repeats: a number
            "income": rng.normal(50, 10, rows).round(2),
            "country": ["FR"] * rows,  # constant
            "joined": pd.date_range("2020-01-01", periods=rows, freq="7D").strftime("%Y-%m-%d"),
            "notes": [f"called about the invoice number {i} and asked for a refund" for i in range(rows)],
            "outcome": np.where(label == "yes", "churned", "stayed"),  # a copy of the label
            "label": label,
        }
    )


def prepared(tmp_path, frame: pd.DataFrame, streaming: bool = False, **data):
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    cfg, base = load_config(
        {
            "task": "tabular_classification",
            "data": {"source": str(path), "label": "label", "streaming": streaming, **data},
        }
    )
    return prepare(cfg, base)


@pytest.mark.parametrize("streaming", [False, True])
def test_every_column_gets_a_role_and_useless_ones_are_dropped_with_a_warning(tmp_path, streaming):
    with pytest.warns(UserWarning, match="is not used") as caught:
        data = prepared(tmp_path, people(), streaming)
    roles = {c["name"]: c["role"] for c in data.report["columns"]}
    assert roles == {
        "customer": "id",
        "row": "id",
        "site": "category",
        "age": "numeric",
        "income": "numeric",
        "country": "constant",
        "joined": "datetime",
        "notes": "text",
        "outcome": "leak",
        "label": "label",
    }
    warned = " ".join(str(w.message) for w in caught)
    for name in ("customer", "row", "country", "notes", "outcome"):
        assert f"column '{name}' is not used" in warned
    assert "predicts the label on its own (accuracy 1.000" in warned
    # the model reads 2 numbers, 3 sites and 5 parts of the date; inputs may still carry the dropped columns
    assert data.input_shape == (10,)
    names = [c["name"] for c in data.preprocessing["columns"]]
    assert names == ["site", "age", "income", "joined"]
    assert {"customer", "row", "country", "notes", "outcome", "label"} <= set(
        data.preprocessing["ignored_columns"]
    )


def test_dates_are_read_as_their_parts_when_predicting():
    from modelfoundry.data.tabular import TableEncoder

    frame = people()
    encoder = TableEncoder().fit(frame[["joined", "age"]].iloc[:40], [])
    later = encoder.transform(pd.DataFrame({"joined": ["2031-06-15", None], "age": [30, 40]}))
    joined = next(c for c in encoder.spec["columns"] if c["name"] == "joined")
    year = later[0, 0] * joined["std"][0] + joined["mean"][0]
    assert round(float(year)) == 2031 and np.isfinite(later).all()  # a missing date takes the median's parts
    with pytest.raises(UserError, match="row 2, column 'joined': 'soon' is not a date or time"):
        encoder.transform(pd.DataFrame({"joined": ["2031-06-15", "soon"], "age": [30, 40]}), "new.jsonl")
    from modelfoundry.errors import InputError
    from modelfoundry.tasks.tabular import cell

    assert cell(joined, "2031-06-15T10:00", "inputs.0.joined") == "2031-06-15T10:00"
    with pytest.raises(InputError, match="not a date or time"):
        cell(joined, 20310615, "inputs.0.joined")


def test_data_columns_overrides_and_data_drop_drops(tmp_path):
    data = prepared(
        tmp_path,
        people(),
        columns={"row": "numeric", "outcome": "category", "site": "id"},
        drop=["customer", "notes"],
    )
    roles = {c["name"]: (c["role"], c["why"]) for c in data.report["columns"]}
    assert roles["row"] == ("numeric", "set by data.columns")
    assert roles["outcome"] == ("category", "set by data.columns")
    assert roles["site"][0] == "id" and roles["customer"] == ("dropped", "data.drop")
    assert [c["name"] for c in data.preprocessing["columns"]] == ["row", "age", "income", "joined", "outcome"]


def test_a_role_that_does_not_exist_or_a_column_not_in_the_file_is_named(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(
            {
                "task": "tabular_classification",
                "data": {"source": "x.csv", "label": "y", "columns": {"a": "idd"}},
            }
        )
    assert "data.columns.a" in str(info.value) and "'id'" in str(info.value)
    assert len(ROLES) == 7 and all(f"'{r}'" in str(info.value) for r in ROLES)
    with pytest.raises(UserError, match="data.columns column 'sight' not found. Did you mean 'site'"):
        prepared(tmp_path, people(), columns={"sight": "category"})
    with pytest.raises(UserError, match="dropped column 'nope' not found"):
        prepared(tmp_path, people(), drop=["nope"])


def test_a_category_in_a_number_column_stops_naming_the_row_and_the_fix(tmp_path):
    frame = people()
    frame["income"] = frame["income"].astype(object)
    frame.loc[7, "income"] = "unknown"
    with pytest.raises(UserError) as info:
        prepared(tmp_path, frame)
    message = str(info.value)
    assert "row 8 (line 9 of people.csv), column 'income': 'unknown' is not a number" in message
    assert "data.columns: {income: category}" in message
    assert (
        prepared(tmp_path, frame, columns={"income": "category"}).report["columns"][4]["role"] == "category"
    )


def test_an_id_like_label_and_a_fractional_label_of_a_classifier_are_refused(tmp_path):
    frame = people()
    with pytest.raises(
        UserError, match="label column 'customer' has 60 different values in 60 rows.*looks like an ID"
    ):
        prepared(tmp_path, frame.drop(columns="label"), label="customer")
    frame["score"] = np.linspace(0, 1, ROWS)
    with pytest.raises(
        UserError, match="label column 'score': 0.01694[0-9]* is a number with a fraction.*tabular_regression"
    ):
        prepared(tmp_path, frame.drop(columns="label"), label="score")
