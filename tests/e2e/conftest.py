"""Fixtures for end-to-end tests: the trained runs many tests read.

Every CLI call pays for importing torch (a few seconds on two shared cores), so `image_run`,
`table_run` and `table_run_lr` are trained once per test session and shared between
pytest-xdist workers through a file lock.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from filelock import FileLock

from e2e_helpers import TINY_MLP, assert_ok, foundry, write_config, write_image_folder, write_table

REVIEWS = Path(__file__).parents[2] / "examples" / "tiny" / "reviews.csv"


@dataclass
class TrainedRun:
    home: Path  # FOUNDRY_HOME the run was registered in
    path: Path  # the run folder
    data: Path  # the training data (an image folder or a CSV)
    train_stdout: str
    train_stderr: str

    @property
    def id(self) -> str:
        return self.path.name


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees (the per-worker base temp's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _train_once(shared: Path, name: str, build) -> list[TrainedRun]:
    """Train via `build(workdir)` the first time any worker asks; later callers read the record."""
    workdir, record = shared / name, shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not record.exists():
            workdir.mkdir(parents=True, exist_ok=True)
            runs = build(workdir)
            record.write_text(json.dumps([{k: str(v) for k, v in vars(run).items()} for run in runs]))
    return [
        TrainedRun(Path(f["home"]), Path(f["path"]), Path(f["data"]), f["train_stdout"], f["train_stderr"])
        for f in json.loads(record.read_text())
    ]


def _image_run(workdir: Path) -> list[TrainedRun]:
    """The starter config of `foundry init`, pointed at an image folder, with a tiny CNN and one epoch.

    One file among the 24 good images is not an image (`cat/broken.png`): training must skip it.
    """
    home = workdir / "runs"
    data = write_image_folder(workdir / "images")
    (data / "cat" / "broken.png").write_bytes(b"these bytes are not a PNG image")
    assert_ok(init := foundry("init", "--task", "image_classification", cwd=workdir, home=home))
    assert "config.yaml" in init.stdout
    result = foundry(
        "train",
        "config.yaml",
        "--set",
        "data.source=images",
        "--set",
        "train.epochs=1",
        "--set",
        "model.width=4",
        cwd=workdir,
        home=home,
    )
    assert_ok(result)
    folders = [p for p in home.iterdir() if p.is_dir()]
    assert len(folders) == 1, f"expected one run folder in {home}, found {folders}"
    return [TrainedRun(home, folders[0], data, result.stdout, result.stderr)]


def _table_runs(workdir: Path) -> list[TrainedRun]:
    """One tabular config trained twice, with learning rates 0.01 and 0.003, into one registry."""
    home = workdir / "runs"
    data = write_table(workdir / "train.csv")
    config = write_config(workdir / "table.yaml", "tabular_classification", "train.csv")
    runs = []
    for lr in ("0.01", "0.003"):
        result = foundry(
            "train",
            config,
            *TINY_MLP,
            "--set",
            f"train.lr={lr}",
            "--run-dir",
            home / f"table-lr-{lr}",
            cwd=workdir,
            home=home,
        )
        assert_ok(result)
        runs.append(TrainedRun(home, home / f"table-lr-{lr}", data, result.stdout, result.stderr))
    return runs


def _text_run(workdir: Path) -> list[TrainedRun]:
    """A 16-wide LSTM trained from scratch on the shipped reviews, with personal data redacted."""
    home, data = workdir / "runs", workdir / "reviews.csv"
    shutil.copy(REVIEWS, data)
    config = write_config(
        workdir / "text.yaml",
        "text_classification",
        "reviews.csv",
        data={"text": "review", "label": "sentiment", "max_length": 32, "privacy": {"pii": "redact"}},
        model={"name": "lstm", "embed_dim": 16, "hidden": 16},
    )
    result = foundry(
        "train", config, "--set", "train.precision=fp32", "--run-dir", home / "text", cwd=workdir, home=home
    )
    assert_ok(result)
    return [TrainedRun(home, home / "text", data, result.stdout, result.stderr)]


@pytest.fixture(scope="session")
def image_run(shared_dir) -> TrainedRun:
    return _train_once(shared_dir, "image", _image_run)[0]


@pytest.fixture(scope="session")
def table_run(shared_dir) -> TrainedRun:
    return _train_once(shared_dir, "table", _table_runs)[0]


@pytest.fixture(scope="session")
def table_run_lr(shared_dir) -> TrainedRun:
    """The same tabular config as `table_run` with another learning rate, for `runs compare`."""
    return _train_once(shared_dir, "table", _table_runs)[1]


@pytest.fixture(scope="session")
def text_run(shared_dir) -> TrainedRun:
    return _train_once(shared_dir, "text", _text_run)[0]


@pytest.fixture
def client_for(monkeypatch):
    """An app over a trained run, in this process, with the run's registry as FOUNDRY_HOME."""
    from modelfoundry.serve.app import Settings, create_app

    clients = []

    def make(run, **settings) -> TestClient:
        monkeypatch.setenv("FOUNDRY_HOME", str(run.home))
        monkeypatch.delenv("FOUNDRY_DB", raising=False)
        settings.setdefault("allowed_hosts", ["testserver"])  # the Host header TestClient sends
        client = TestClient(create_app(Settings(str(run.path), **settings)), client=("127.0.0.1", 50000))
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
