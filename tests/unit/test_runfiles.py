"""The files of a run: atomic writes keep the old file on any failure and leave nothing behind, JSON takes
numpy values, a folder is replaced whole, and the run folder's paths follow FOUNDRY_HOME."""

import json
import os

import numpy as np
import pytest
import torch

from modelfoundry import runfiles
from modelfoundry.data.prepare import ArrayData
from modelfoundry.errors import UserError


def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    runfiles.atomic_write(path, "new ✓")
    runfiles.atomic_write(tmp_path / "sub" / "weights.bin", b"\x00\x01")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert (tmp_path / "sub" / "weights.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["metrics.json", "sub", "weights.bin"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_atomic_write_keeps_the_old_file_when_flushing_or_renaming_fails(tmp_path, monkeypatch, failing):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="No space left"):
        runfiles.atomic_write(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails_midway(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    path.write_text("old")

    def interrupted_write():
        with runfiles.atomic_path(path) as tmp:
            tmp.write_text("half of the ne")
            raise KeyboardInterrupt  # a Ctrl-C while writing

    with pytest.raises(KeyboardInterrupt):
        interrupted_write()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_atomic_write_never_leaves_the_file_unsynced_before_the_rename(tmp_path, monkeypatch):
    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: order.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: order.append("replace") or real_replace(a, b))
    runfiles.atomic_write(tmp_path / "config.yaml", "a: 1\n")
    assert order == ["fsync", "replace", "fsync"]  # the file's bytes, the rename, then the folder entry


def test_what_a_killed_write_leaves_is_what_the_leftover_cleanup_removes(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_text("whole")
    names = []

    def failed_write(atomic, target):
        with atomic(target) as tmp:
            names.append(tmp.name)
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        failed_write(runfiles.atomic_path, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(RuntimeError, match="killed"):
        failed_write(runfiles.atomic_folder, tmp_path / "model")
    file_name, folder_name = names
    (tmp_path / "checkpoints" / file_name).write_text("half")  # as a SIGKILL mid-write leaves them
    (tmp_path / folder_name).mkdir()
    (tmp_path / folder_name / "model.json").write_text("{}")
    runfiles.remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "last.pt"]


def test_atomic_write_json_turns_numpy_values_into_json(tmp_path):
    payload = {
        "accuracy": np.float32(0.75),
        "count": np.int64(3),
        "confusion": np.array([[1, 2], [3, 4]]),
        "flag": np.bool_(True),
        "nested": [{"f1": np.float64(0.5)}],
    }
    runfiles.atomic_write_json(tmp_path / "metrics.json", payload)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "accuracy": 0.75,
        "count": 3,
        "confusion": [[1, 2], [3, 4]],
        "flag": True,
        "nested": [{"f1": 0.5}],
    }


def test_atomic_folder_replaces_a_package_whole_and_keeps_it_on_failure(tmp_path):
    package = tmp_path / "model"
    with runfiles.atomic_folder(package) as tmp:
        (tmp / "model.json").write_text("v1")
        (tmp / "encoder").mkdir()
        (tmp / "encoder" / "config.json").write_text("{}")
    with runfiles.atomic_folder(package) as tmp:
        (tmp / "model.json").write_text("v2")
    assert [p.name for p in package.iterdir()] == ["model.json"] and (
        package / "model.json"
    ).read_text() == "v2"

    def failed_write():
        with runfiles.atomic_folder(package) as tmp:
            (tmp / "model.json").write_text("v3, half")
            raise ValueError("failed midway")

    with pytest.raises(ValueError, match="failed midway"):
        failed_write()
    assert (package / "model.json").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_samples_round_trip_and_a_run_without_one_has_none(tmp_path):
    data = ArrayData(np.arange(12, dtype=np.float32).reshape(6, 2), np.array([0, 1, 0, 1, 1, 0]))
    runfiles.save_sample(tmp_path, runfiles.HELDOUT, data, limit=4)
    runfiles.save_sample(tmp_path, runfiles.CALIBRATION, None)
    sample = runfiles.load_sample(tmp_path, runfiles.HELDOUT)
    assert torch.equal(sample["inputs"], data.inputs[:4]) and torch.equal(sample["targets"], data.targets[:4])
    assert runfiles.load_sample(tmp_path, runfiles.CALIBRATION) is None


def test_run_paths_follow_foundry_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path / "home"))
    assert runfiles.runs_root() == tmp_path / "home"
    assert runfiles.scratch_root() == tmp_path / "home" / ".scratch"
    monkeypatch.delenv("FOUNDRY_HOME")
    assert runfiles.runs_root() == runfiles.Path("runs")


def test_package_and_run_folder_of_a_run(tmp_path):
    package = tmp_path / "run" / "model"
    package.mkdir(parents=True)
    with pytest.raises(UserError, match="no model package here"):
        runfiles.package_folder(tmp_path / "run")
    (package / "model.json").write_text("{}")
    (package / "model.onnx").write_bytes(b"")  # an int8 variant has only the graph
    assert runfiles.package_folder(tmp_path / "run") == package == runfiles.package_folder(package)
    assert runfiles.run_folder(package) == tmp_path / "run"
    assert runfiles.run_folder(tmp_path / "bare") == tmp_path / "bare"


def test_importing_runfiles_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, modelfoundry.runfiles; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
