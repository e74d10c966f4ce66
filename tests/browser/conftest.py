"""Fixtures for the browser tests: headless Chromium and a fresh page per test, tiny models trained with
the real CLI, and `foundry serve` processes over them.

Each model is trained once per session (both test modules use them) into its own FOUNDRY_HOME;
servers start on any free loopback port (`--port 0`) and are stopped at teardown.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))  # the e2e helpers: real CLI, tiny data

from e2e_helpers import TINY_MLP, Server, assert_ok, foundry, write_config, write_image_folder, write_table

REVIEWS = Path(__file__).parents[2] / "examples" / "tiny" / "reviews.csv"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    """Called atop each browser test module: skips it when Debian's chromium is missing (fails in CI)."""
    if not CHROMIUM.exists() and os.environ.get("FOUNDRY_REQUIRE_BROWSER"):  # CI: a missing browser fails
        raise RuntimeError(
            f"{CHROMIUM} is missing but FOUNDRY_REQUIRE_BROWSER is set; .ci/chromium.sh should install it"
        )
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium) to run browser "
            "tests",
            allow_module_level=True,
        )


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per module (playwright allows one sync instance at a time). Not per session:
    playwright's sync API keeps an asyncio loop running in the thread until it stops, and every later test
    of that pytest-xdist worker that calls asyncio.run() (tests/unit/test_batching.py, test_engine.py)
    would fail with "cannot be called from a running event loop"."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)  # the first prediction of a fresh server on two busy cores
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page (own storage); the test fails if the page's script throws."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    script_errors = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    yield page
    context.close()
    assert not script_errors, f"the page's script threw: {script_errors}"


@dataclass
class Trained:
    home: Path  # FOUNDRY_HOME the run is registered in
    path: Path  # the run folder


def train(work: Path, config: Path, *overrides: str) -> Trained:
    home = work / "runs"
    assert_ok(foundry("train", config, *overrides, "--run-dir", home / "run", cwd=work, home=home))
    return Trained(home, home / "run")


@pytest.fixture(scope="session")
def table_model(tmp_path_factory) -> Trained:
    """An MLP on x1, x2 (numbers) and color (a category) -> a, b, c."""
    work = tmp_path_factory.mktemp("table")
    write_table(work / "train.csv")
    return train(work, write_config(work / "table.yaml", "tabular_classification", "train.csv"), *TINY_MLP)


@pytest.fixture(scope="session")
def image_model(tmp_path_factory) -> Trained:
    """A 4-wide CNN on 8x8 grey PNGs -> cat, dog."""
    work = tmp_path_factory.mktemp("image")
    write_image_folder(work / "images")
    return train(work, write_config(work / "image.yaml", "image_classification", "images"))


@pytest.fixture(scope="session")
def text_model(tmp_path_factory) -> Trained:
    """A 16-wide LSTM trained from scratch on the shipped reviews -> positive, negative."""
    work = tmp_path_factory.mktemp("text")
    shutil.copy(REVIEWS, work / "reviews.csv")
    config = write_config(
        work / "text.yaml",
        "text_classification",
        "reviews.csv",
        data={"text": "review", "label": "sentiment", "max_length": 32},
        model={"name": "lstm", "embed_dim": 16, "hidden": 16},
    )
    return train(work, config, "--set", "train.precision=fp32")


@pytest.fixture(scope="session")
def serve(tmp_path_factory):
    """`serve(model, *args)`: a running `foundry serve` over the model, ready once /readyz answers 200. The
    same model and arguments get the same server for the whole session (each start costs a torch import)."""
    servers = {}

    def start(model: Trained, *args: str) -> Server:
        if (model.path, args) in servers:
            return servers[model.path, args]
        server = Server(model.path, *args, cwd=tmp_path_factory.mktemp("serve"), home=model.home)
        servers[model.path, args] = server
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, f"{server.url}/readyz did not answer 200 within 60 s"
            time.sleep(0.2)
        return server

    yield start
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def table_server(serve, table_model):
    return serve(table_model, "--batch-chunk", "64")  # a file of a few hundred rows streams in a few steps


@pytest.fixture(scope="session")
def regression_model(tmp_path_factory) -> Trained:
    """An MLP predicting a price from size (a number) and city (a category)."""
    import numpy as np
    import pandas as pd

    work = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"size": rng.uniform(20, 200, 120).round(1), "city": rng.choice(["north", "south"], 120)}
    )
    frame["price"] = (1000 + 30 * frame["size"] + (frame["city"] == "north") * 400).round(2)
    frame.to_csv(work / "prices.csv", index=False)
    config = write_config(
        work / "prices.yaml",
        "tabular_regression",
        "prices.csv",
        data={"label": "price"},
        model={"hidden": [8]},
        train={"epochs": 20, "lr": 0.01, "precision": "fp32"},
    )
    return train(work, config)
