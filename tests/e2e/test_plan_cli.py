"""`foundry plan` through the real CLI: a table with formulas, JSON for machines, clear errors."""

import json
import subprocess
import sys

import pytest


def foundry(*args):
    return subprocess.run(
        [sys.executable, "-m", "modelfoundry", *args], check=False, capture_output=True, text=True
    )


def test_plan_train_prints_flops_time_cost_and_their_formulas():
    result = foundry(
        "plan",
        "train",
        "--model",
        "gpt3-175b",
        "--tokens",
        "3e11",
        "--gpu",
        "a100-80gb",
        "--gpus",
        "1024",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    flops = plan["estimates"]["training_flops"]
    assert abs(flops["value"] / 3.14e23 - 1) < 0.01  # the GPT-3 paper's figure
    assert "6 * N * D" in flops["formula"]
    assert plan["estimates"]["cost_usd"]["value"] > 0


def test_plan_with_unknown_gpu_suggests_the_nearest_and_exits_2():
    result = foundry("plan", "serve", "--model", "llama3-70b", "--gpu", "h10")
    assert result.returncode == 2
    assert "Did you mean 'h100'" in result.stderr and "Traceback" not in result.stderr


def test_a_plan_that_does_not_fit_says_what_would():
    result = foundry(
        "plan", "train", "--model", "llama-7b", "--gpu", "a100-80gb", "--gpus", "8", "--seq-len", "2048"
    )
    assert result.returncode == 0, result.stderr
    assert "Does not fit on 8 x a100-80gb. What would help:" in result.stdout
    assert "--sharding zero1 fits on these 8 GPUs" in result.stdout


# The planner's prediction of a run's training time must land within this factor of the measured time.
# Measured on this 2-core VM (bench/RESULTS.md, "plan vs measured") the ratio is 0.5-0.9; the band is
# wider because the suite runs two test processes on the two cores, which the calibration cannot foresee.
PLAN_TOLERANCE = 3.0


def test_a_calibrated_plan_predicts_a_real_training_run_within_the_stated_tolerance(tmp_path):
    from e2e_helpers import assert_ok, foundry as run_foundry, write_config

    calibrated = run_foundry("plan", "calibrate", "--json", cwd=tmp_path, home=tmp_path)
    assert_ok(calibrated)
    assert json.loads(calibrated.stdout)["step_seconds"] > 0
    config = write_config(
        tmp_path / "digits.yaml",
        "tabular_classification",
        "builtin:digits",
        data={"label": None},
        model={"hidden": [64]},
        train={"epochs": 10, "batch_size": 32},
    )
    assert_ok(run_foundry("train", config, cwd=tmp_path, home=tmp_path))
    plan = json.loads(next(tmp_path.glob("*/metrics.json")).read_text())["plan"]
    assert plan["predicted_seconds"] == pytest.approx(plan["compute_seconds"] + plan["overhead_seconds"])
    assert plan["steps_per_epoch"] == 40  # 70% of the 1,797 rows of builtin:digits in batches of 32
    ratio = plan["predicted_over_measured"]
    print(f"predicted / measured: {ratio:.2f}")
    assert 1 / PLAN_TOLERANCE <= ratio <= PLAN_TOLERANCE, plan
