"""A GPT trained on two processes through the real CLI: `foundry train --nproc 2` with DDP (the default)
and with `train.strategy: fsdp`, the FSDP run stopped with Ctrl-C after two evaluation intervals and
resumed. Both end with the same numbers and the same packaged model: FSDP shards the same arithmetic, and
its checkpoints are the whole state one process writes. Misplaced settings end in one message, exit 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_text_generation import write_corpus

from e2e_helpers import assert_ok, assert_user_error, cli_env, foundry, one_line

STEPS = 40  # 10 evaluation intervals; with 2 processes each interval is 2 steps of 2 x 8 windows
TOLERANCE = 1e-4  # reduce-scatter and all-reduce may sum the two gradients in another order
PROMPT = "The king"


def gpt_config(folder):
    """A tiny GPT whose size foundry picks (deterministic with train.max_steps and no time budget)."""
    write_corpus(folder / "corpus.txt")
    config = {
        "task": "text_generation",
        "data": {"source": "corpus.txt"},
        "model": {"block_size": 32},
        # clipped at every step (the gradient norm starts near 1): clipping each shard by its own norm instead
        # of the whole gradient's moved val_loss by 1e-3 here
        "train": {
            "max_steps": STEPS,
            "batch_size": 8,
            "grad_clip": 0.1,
            "precision": "fp32",
            "device": "cpu",
        },
    }
    (folder / "gpt.yaml").write_text(yaml.safe_dump(config))
    return folder / "gpt.yaml"


def greedy(run, folder) -> str:
    result = foundry(
        "generate",
        run,
        PROMPT,
        "--temperature",
        "0",
        "--max-new-tokens",
        "20",
        cwd=folder,
        home=folder / "home",
    )
    assert_ok(result)
    return result.stdout


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    config = gpt_config(folder)
    result = foundry("train", config, "--nproc", "2", "--run-dir", "ddp", cwd=folder, home=folder / "home")
    assert_ok(result)
    return folder, folder / "ddp", result, greedy(folder / "ddp", folder)


@pytest.mark.slow
def test_a_gpt_trains_on_two_processes_with_ddp_and_generates(ddp_run):
    _, run, result, text = ddp_run
    assert "DDP: 2 processes (gloo)" in one_line(result.stderr)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["distributed"]["strategy"] == "ddp" and metrics["distributed"]["processes"] == 2
    assert 0 < metrics["test"]["bits_per_byte"] < 8
    assert len(text.rstrip("\n")) == 20  # characters: one per token


@pytest.mark.slow
def test_fsdp_stopped_and_resumed_ends_like_ddp_and_packages_the_same_model(ddp_run, tmp_path):
    _, ddp, _, ddp_text = ddp_run
    config = gpt_config(tmp_path)
    run = tmp_path / "fsdp"
    command = [sys.executable, "-m", "modelfoundry", "train", str(config), "--nproc", "2"]
    command += ["--set", "train.strategy=fsdp", "--run-dir", str(run)]
    log = tmp_path / "stopped.stderr"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=cli_env(tmp_path / "home"),
            stderr=stderr,
            # Ctrl-C must reach it even where pytest runs in the background, which ignores SIGINT (inherited)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 (no lock taken)
        )
    try:
        _wait_for_interval(process, log, run, 2)
        process.send_signal(signal.SIGINT)  # Ctrl-C: the launcher stops torchrun and its processes
        process.wait(timeout=60)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode != 0 and not (run / "metrics.json").exists(), log.read_text()
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    stopped_at = checkpoint["epoch"]
    assert 2 <= stopped_at < 10
    # the whole state, as one process writes it: the weights by name, the optimizer state by number
    ddp_checkpoint = torch.load(ddp / "checkpoints" / "last.pt", weights_only=True)
    assert {k: v.shape for k, v in checkpoint["model"].items()} == {
        k: v.shape for k, v in ddp_checkpoint["model"].items()
    }
    assert sorted(checkpoint["optimizer"]["state"]) == sorted(ddp_checkpoint["optimizer"]["state"])

    resumed = subprocess.run(
        [*command, "--resume"],
        cwd=tmp_path,
        env=cli_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert_ok(resumed)
    shown = one_line(resumed.stderr)
    assert "FSDP: 2 processes (gloo); weights, gradients and optimizer state sharded" in shown
    assert f"epoch {stopped_at + 1}/10" in shown and f"epoch {stopped_at}/10" not in shown
    assert "chosen: model" not in shown  # the resumed run keeps the sizes chosen when it started

    want = json.loads((ddp / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    assert got["distributed"]["strategy"] == "fsdp"
    assert got["recipe"]["chosen"] == want["recipe"]["chosen"] and got["model"] == want["model"]
    assert [h["epoch"] for h in got["history"]] == list(range(1, 11))
    for a, b in zip(got["history"], want["history"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=TOLERANCE), a["epoch"]
    for split in ("val", "test"):
        assert got[split]["bits_per_byte"] == pytest.approx(want[split]["bits_per_byte"], abs=TOLERANCE)
    weights, ddp_weights = (load_file(r / "model" / "model.safetensors") for r in (run, ddp))
    assert weights.keys() == ddp_weights.keys()
    assert all(torch.allclose(weights[k], ddp_weights[k], atol=1e-5) for k in weights)
    assert greedy(run, tmp_path) == ddp_text  # the same text from the same weights


def test_a_strategy_needs_several_processes_and_a_model_with_blocks(tmp_path):
    config = gpt_config(tmp_path)
    home = tmp_path / "home"
    single = foundry("train", config, "--set", "train.strategy=fsdp", cwd=tmp_path, home=home)
    assert_user_error(single, "train.strategy: fsdp", "this run has one process", "--nproc 2")
    bad = foundry("train", config, "--nproc", "2", "--set", "train.strategy=zero", cwd=tmp_path, home=home)
    assert_user_error(bad, "train.strategy", "'ddp' or 'fsdp'", "zero")
    pretrained = foundry(
        "train",
        config,
        "--set",
        "model.name=pretrained_lm",
        "--set",
        "train.strategy=fsdp",
        cwd=tmp_path,
        home=home,
    )
    assert_user_error(
        pretrained, "train.strategy: fsdp", "'pretrained_lm' has none to shard", "train.strategy: ddp"
    )
    assert not home.exists()  # refused before anything ran


def test_lora_settings_on_a_gpt_are_refused(tmp_path):
    config = gpt_config(tmp_path)
    result = foundry(
        "train", config, "--set", "train.method=full", "--set", "train.lora.r=4", cwd=tmp_path, home=tmp_path
    )
    message = assert_user_error(
        result, "train.method: 'full' is for model.name: pretrained_lm", "train.lora:"
    )
    assert "Remove train.method" in message and "Remove train.lora" in message


def _wait_for_interval(process, log, run, interval: int, timeout_s: float = 180) -> None:
    """Block until the run's checkpoint holds evaluation interval `interval` (written atomically)."""
    deadline = time.monotonic() + timeout_s
    checkpoint = run / "checkpoints" / "last.pt"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"training ended (exit {process.returncode}) before it was stopped:\n{log.read_text()}"
            )
        try:
            if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["epoch"] >= interval:
                return
        except (OSError, RuntimeError, EOFError):
            pass
        time.sleep(0.05)
    pytest.fail(f"no checkpoint of interval {interval} within {timeout_s}s:\n{log.read_text()}")
