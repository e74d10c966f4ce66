"""`foundry plan` through the real CLI: a table with formulas, JSON for machines, clear errors."""
import json
import subprocess
import sys


def foundry(*args):
    return subprocess.run([sys.executable, "-m", "modelfoundry", *args], capture_output=True, text=True)


def test_plan_train_prints_flops_time_cost_and_their_formulas():
    result = foundry("plan", "train", "--model", "gpt3-175b", "--tokens", "3e11", "--gpu", "a100-80gb",
                     "--gpus", "1024", "--json")
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
