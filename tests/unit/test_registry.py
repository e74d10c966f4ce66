"""The run registry in a throwaway SQLite file: runs are recorded, listed and found by id or prefix."""

from __future__ import annotations

import json
import time

import pytest

from modelfoundry.errors import UserError
from modelfoundry.runfiles import runs_root
from modelfoundry.store.registry import Registry, database_url, resolve_run, to_json


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'db' / 'registry.db'}")


def start(registry: Registry, run_id: str, tmp_path, name: str | None = None) -> None:
    registry.start(run_id, name, "image_classification", "cnn", tmp_path / run_id, {"train": {"epochs": 1}})


def test_start_finish_and_get(registry, tmp_path):
    start(registry, "20240101-000000-digits-cnn-ab12", tmp_path, name="first")
    record = registry.get("20240101-000000-digits-cnn-ab12")
    assert record.status == "running" and record.finished_at is None
    assert record.name == "first" and record.model == "cnn" and record.config == {"train": {"epochs": 1}}
    assert record.path == str((tmp_path / "20240101-000000-digits-cnn-ab12").resolve())

    registry.finish(
        "20240101-000000-digits-cnn-ab12",
        "completed",
        metrics={"test_accuracy": 0.9},
        timings={"data": 0.5, "train": 12.0},
    )
    record = registry.get("20240101-000000-digits-cnn-ab12")
    assert record.status == "completed"
    assert record.metrics == {"test_accuracy": 0.9}
    assert record.train_seconds == 12.0
    assert record.finished_at is not None
    json.dumps(to_json(record))


def test_failed_run_keeps_its_error(registry, tmp_path):
    start(registry, "run-a", tmp_path)
    registry.finish("run-a", "failed", error="UserError: bad data")
    record = registry.get("run-a")
    assert record.status == "failed" and record.error == "UserError: bad data" and record.metrics is None


def test_restarting_a_run_resets_it_to_running(registry, tmp_path):
    start(registry, "run-a", tmp_path)
    registry.finish("run-a", "failed", error="killed")
    start(registry, "run-a", tmp_path)
    record = registry.get("run-a")
    assert record.status == "running" and record.error is None
    assert len(registry.list()) == 1


def test_finish_of_an_unknown_run_is_ignored(registry):
    registry.finish("never-started", "completed")
    assert registry.list() == []


def test_list_is_newest_first_and_limited(registry, tmp_path):
    for run_id in ("run-1", "run-2", "run-3"):
        start(registry, run_id, tmp_path)
        time.sleep(0.01)
    assert [r.id for r in registry.list()] == ["run-3", "run-2", "run-1"]
    assert [r.id for r in registry.list(limit=2)] == ["run-3", "run-2"]


def test_get_by_prefix_and_by_folder_path(registry, tmp_path):
    start(registry, "20240101-aaaa", tmp_path)
    start(registry, "20240202-bbbb", tmp_path)
    assert registry.get("202401").id == "20240101-aaaa"
    assert registry.get(str(tmp_path / "runs" / "20240202-bbbb")).id == "20240202-bbbb"


def test_ambiguous_prefix_lists_the_candidates(registry, tmp_path):
    start(registry, "20240101-aaaa", tmp_path)
    start(registry, "20240102-bbbb", tmp_path)
    with pytest.raises(UserError, match="'202401' is ambiguous: .*20240101-aaaa.*20240102-bbbb"):
        registry.get("202401")


def test_unknown_run_says_how_to_list_runs(registry, tmp_path):
    start(registry, "20240101-aaaa", tmp_path)
    with pytest.raises(UserError, match="no run 'zzz' in the registry.*foundry runs list"):
        registry.get("zzz")


def test_registry_survives_reopening(registry, tmp_path):
    start(registry, "run-a", tmp_path)
    again = Registry(registry.url)
    assert again.get("run-a").status == "running"


def test_locations_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FOUNDRY_DB", raising=False)
    assert runs_root() == tmp_path / "home"
    assert database_url() == f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    monkeypatch.setenv("FOUNDRY_DB", f"sqlite:///{tmp_path / 'other.db'}")
    assert database_url() == f"sqlite:///{tmp_path / 'other.db'}"


def test_resolve_run_from_folder_id_or_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FOUNDRY_DB", raising=False)
    elsewhere = tmp_path / "elsewhere" / "20240101-aaaa"
    elsewhere.mkdir(parents=True)
    Registry().start("20240101-aaaa", None, "tabular_classification", "mlp", elsewhere, {})
    (tmp_path / "home" / "20240303-cccc").mkdir(parents=True)
    assert resolve_run(str(elsewhere)) == elsewhere
    assert resolve_run("20240303-cccc") == tmp_path / "home" / "20240303-cccc"
    assert resolve_run("20240101") == elsewhere.resolve()
    with pytest.raises(UserError, match="no run 'nothing'"):
        resolve_run("nothing")


def test_underscore_in_a_prefix_is_literal(registry, tmp_path):
    start(registry, "my_run-01", tmp_path)
    start(registry, "my-run-02", tmp_path)
    assert registry.get("my_run").id == "my_run-01"
