"""A LoRA run keeps what `foundry plan finetune --gpu cpu` predicted for it beside what it measured, as
classification runs do: without a calibration it says how to get one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from modelfoundry.llm.sft import plan_vs_measured
from modelfoundry.models.gpt import GPTConfig


def run_like(method: str = "lora"):
    model = SimpleNamespace(
        config=GPTConfig(vocab_size=1000, n_layer=4, n_head=4, n_embd=128, block_size=256)
    )
    cfg = SimpleNamespace(train=SimpleNamespace(lora=SimpleNamespace(r=8)))
    throughput = {"tokens": 50_000, "tokens_per_second": 500.0}
    return model, cfg, method, 1_000_000, 1000, throughput, 100.0, {}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path))
    return tmp_path


def test_the_run_records_the_plans_prediction_beside_the_measured_seconds(home):
    from modelfoundry.plan import calibrate

    calibrate.save(
        {
            "measured": "2026-12-01",
            "processor": "test CPU",
            "threads": 2,
            "matmul_fp32_flops": 7.7e10,
            "train_flops": 3.0e10,
            "bandwidth_bytes_s": 1.4e10,
            "memory_gb": 24.0,
            "mfu": 0.4,
        }
    )
    record = plan_vs_measured(*run_like())
    # 4 N D for LoRA (no weight gradients): 4 * 1e6 * 5e4 = 2e11 FLOP at 0.4 * 77 GFLOP/s
    assert record["predicted_seconds"] == pytest.approx(2e11 / (0.4 * 7.7e10), rel=1e-6)
    assert record["measured_seconds"] == 100.0 and record["seconds_ratio"] == pytest.approx(
        100 / 6.49, rel=1e-2
    )
    assert record["measured_peak_rss_gb"] > 0 and record["predicted_states_gb"] > 0
    assert "--method lora --lora-rank 8 --tokens 50000 --gpu cpu" in record["command"]


def test_without_a_calibration_the_record_says_how_to_make_one(home):
    record = plan_vs_measured(*run_like())
    assert record["predicted_seconds"] is None and "foundry plan calibrate" in record["note"]
    assert record["measured_seconds"] == 100.0
