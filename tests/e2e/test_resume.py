"""A run killed with SIGKILL mid-training resumes from its last checkpoint and ends exactly where an
uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from e2e_helpers import assert_ok, cli_env, foundry, one_line, write_config

EPOCHS = 8
KILL_AFTER_EPOCH = 2


@pytest.mark.slow
def test_run_killed_mid_training_resumes_to_the_same_result_as_an_uninterrupted_run(tmp_path):
    # Augmentation on, so resuming must also restore the per-epoch random streams, not just the weights.
    config = write_config(
        tmp_path / "digits.yaml",
        "image_classification",
        "builtin:digits",
        data={"augment": {"crop_padding": 1, "rotation": 10}},
        train={"epochs": EPOCHS, "batch_size": 32, "precision": "fp32", "device": "cpu"},
    )
    home = tmp_path / "runs"

    assert_ok(foundry("train", config, "--run-dir", "uninterrupted", cwd=tmp_path, home=home))

    killed = tmp_path / "killed"
    log = tmp_path / "killed.stderr"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelfoundry", "train", str(config), "--run-dir", str(killed)],
            cwd=tmp_path,
            env=cli_env(home),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait_for_epoch(process, log, killed, KILL_AFTER_EPOCH)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    # a kill mid-write may leave `.last.pt.tmp` beside the intact `last.pt`; resuming removes it
    assert not (killed / "metrics.json").exists()
    checkpoint = torch.load(killed / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert KILL_AFTER_EPOCH <= checkpoint["epoch"] < EPOCHS
    listed = foundry("runs", "show", "killed", cwd=tmp_path, home=home)
    assert_ok(listed)
    assert json.loads(listed.stdout)["status"] == "stopped"  # not "running" forever: its process is gone

    resumed = foundry("train", config, "--resume", cwd=tmp_path, home=home)  # finds the stopped run itself

    assert_ok(resumed)
    assert f"resuming {killed}" in one_line(resumed.stderr)
    done = checkpoint["epoch"]
    assert (
        f"epoch {done}/{EPOCHS}" not in resumed.stderr and f"epoch {done + 1}/{EPOCHS}" in resumed.stderr
    ), "the resumed run should continue after the checkpoint's epoch, not start over"
    assert not list(killed.rglob("*.tmp"))
    assert (
        json.loads(foundry("runs", "show", "killed", cwd=tmp_path, home=home).stdout)["status"] == "completed"
    )
    expected = json.loads((tmp_path / "uninterrupted" / "metrics.json").read_text())
    actual = json.loads((killed / "metrics.json").read_text())
    assert [h["epoch"] for h in actual["history"]] == list(range(1, EPOCHS + 1))
    for want, got in zip(expected["history"], actual["history"]):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), f"epoch {got['epoch']} {key}"
    assert actual["best_epoch"] == expected["best_epoch"]
    assert actual["test"]["accuracy"] == pytest.approx(expected["test"]["accuracy"], abs=1e-6)
    assert actual["test"]["confusion_matrix"] == expected["test"]["confusion_matrix"]


def _wait_for_epoch(process: subprocess.Popen, log, run_dir, epoch: int, timeout_s: float = 180) -> None:
    """Block until the run's checkpoint holds `epoch` (the checkpoint is written in the background after
    the epoch's line is printed, so the line alone does not say the checkpoint is there)."""
    deadline = time.monotonic() + timeout_s
    checkpoint = run_dir / "checkpoints" / "last.pt"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"training ended (exit {process.returncode}) before it could be killed:\n{log.read_text()}"
            )
        if checkpoint.is_file():
            try:  # replaced atomically, so a read sees a whole file, old or new
                if torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] >= epoch:
                    return
            except (OSError, RuntimeError, EOFError):
                pass
        time.sleep(0.05)
    pytest.fail(f"no checkpoint of epoch {epoch} within {timeout_s}s:\n{log.read_text()}")
