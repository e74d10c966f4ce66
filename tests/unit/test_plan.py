"""`foundry plan`: the arithmetic against published numbers, bad input, and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from modelfoundry.errors import UserError
from modelfoundry.plan import estimate as est
from modelfoundry.plan.cli import plan_app
from modelfoundry.plan.hardware import GPUS, get_gpu
from modelfoundry.plan.models import PRESETS, count_params, get_model, model_from_config

runner = CliRunner()


def value(rows: dict, key: str) -> float:
    return rows[key]["value"]


# --- published checks ---------------------------------------------------------------------------


def test_gpt3_training_flops_match_the_paper():
    flops = value(est.training_flops(get_model("gpt3-175b").params, 300e9), "training_flops")
    assert flops == pytest.approx(3.15e23, rel=1e-9)
    assert flops == pytest.approx(3.14e23, rel=0.01)  # Brown et al. 2020, Table D.1


def test_llama_65b_takes_about_21_days_at_the_reported_throughput():
    # Touvron et al. 2023: 380 tokens/s/GPU on 2048 A100-80GB, 1.4T tokens, "approximately 21 days".
    rows = est.time_from_throughput(1.4e12, 380, 2048)
    assert value(rows, "time_days") == pytest.approx(1.4e12 / (380 * 2048) / 86400)
    assert 20 < value(rows, "time_days") < 22
    # The same run expressed as MFU: 6 N * 380 tokens/s over the A100's bf16 peak is ~48%.
    implied_mfu = 6 * get_model("llama-65b").params * 380 / get_gpu("a100-80gb").peak_flops("bf16")
    days = value(est.training_time(6 * 65.2e9 * 1.4e12, get_gpu("a100-80gb"), 2048, implied_mfu), "time_days")
    assert days == pytest.approx(value(rows, "time_days"), rel=1e-6)


def test_chinchilla_70b_wants_1_4t_tokens_and_budget_inverts_it():
    assert value(est.chinchilla_tokens(70e9), "chinchilla_tokens") == pytest.approx(1.4e12)
    gpu = get_gpu("h100")
    flops = 6 * 70e9 * 1.4e12
    dollars = flops / (gpu.peak_flops("bf16") * 0.4) / 3600 * gpu.price_per_hour
    rows = est.budget(dollars, gpu)
    assert value(rows, "training_flops") == pytest.approx(flops)
    assert value(rows, "optimal_params") == pytest.approx(70e9)
    assert value(rows, "optimal_tokens") == pytest.approx(1.4e12)


def test_mixed_precision_adamw_is_16_bytes_per_param():
    rows = est.training_memory(7e9)
    assert value(rows, "states_gb") == pytest.approx(112)
    assert value(est.training_memory(7e9, optimizer="sgd"), "states_gb") == pytest.approx(84)
    assert value(est.training_memory(7e9, optimizer="adam8bit"), "states_gb") == pytest.approx(70)


@pytest.mark.parametrize(
    "sharding, expected_gb",
    [
        ("none", 112),
        ("zero1", 4 * 7 + 12 * 7 / 8),
        ("zero2", 2 * 7 + 14 * 7 / 8),
        ("zero3", 112 / 8),
        ("fsdp", 112 / 8),
    ],
)
def test_sharding_splits_the_right_states(sharding, expected_gb):
    assert value(est.training_memory(7e9, gpus=8, sharding=sharding), "states_gb") == pytest.approx(
        expected_gb
    )


def test_bert_base_fp32_weights():
    bert = get_model("bert-base")
    assert 0.42 <= bert.params * 4 / 1e9 <= 0.44
    assert count_params(PRESETS["bert-base"][0])["params"] == 109_482_240  # bert-base-uncased, exactly


def test_llama2_7b_fp16_kv_cache_is_half_a_megabyte_per_token():
    rows = est.kv_cache(layers=32, kv_heads=32, head_dim=128, context=1, batch=1)
    assert value(rows, "kv_bytes_per_token") == 0.5 * 2**20


@pytest.mark.parametrize("name", list(PRESETS))
def test_counting_a_preset_config_reproduces_its_published_size(name):
    config, published, source = PRESETS[name]
    assert source
    assert count_params(config)["params"] == pytest.approx(published, rel=0.01)


def test_gqa_shrinks_the_kv_cache():
    llama3 = get_model("llama3-8b")
    assert (llama3.kv_heads, llama3.head_dim) == (8, 128)
    rows = est.kv_cache(llama3.layers, llama3.kv_heads, llama3.head_dim, context=8192, batch=1)
    assert value(rows, "kv_cache_gb") == pytest.approx(2 * 32 * 8 * 128 * 2 * 8192 / 1e9)


def test_lora_counts_adapters_and_qlora_stores_the_base_at_4_bits():
    adapters = value(
        est.lora_params(layers=2, hidden=32, heads=4, kv_heads=2, head_dim=8, rank=4), "lora_params"
    )
    assert adapters == 2 * 4 * ((32 + 32) + 2 * (32 + 16) + (32 + 32))
    lora = est.training_memory(1e9, method="lora", lora_params=1e6)
    qlora = est.training_memory(1e9, method="qlora", lora_params=1e6)
    assert value(lora, "states_gb") == pytest.approx((1e9 * 2 + 1e6 * 16) / 1e9)
    assert value(qlora, "states_gb") == pytest.approx((1e9 * 0.5 + 1e6 * 16) / 1e9)


def test_activation_memory_follows_korthikanti():
    full = value(
        est.activation_memory(layers=2, hidden=32, heads=4, seq_len=16, micro_batch=3), "activations_gb"
    )
    assert full * 1e9 == 2 * (34 * 16 * 3 * 32 + 5 * 4 * 16**2 * 3)
    recompute = est.activation_memory(layers=2, hidden=32, heads=4, seq_len=16, micro_batch=3, recompute=True)
    assert value(recompute, "activations_gb") * 1e9 == 2 * 2 * 16 * 3 * 32


def test_serving_small_batch_decode_is_memory_bound_and_big_model_needs_several_gpus():
    m = get_model("llama3-70b")
    rows = est.serving(
        m.params, m.layers, m.kv_heads, m.head_dim, get_gpu("h100"), context=4096, batch=1, hidden=m.hidden
    )
    assert value(rows, "min_gpus") == 2  # 141 GB of fp16 weights over 72 GB usable per H100
    assert rows["decode_tokens_s"]["formula"].endswith("memory-bound")
    assert value(rows, "decode_tokens_s") == pytest.approx(2 * 3.35e12 / (value(rows, "memory_gb") * 1e9))
    int4 = est.serving(
        m.params, m.layers, m.kv_heads, m.head_dim, get_gpu("h100"), context=4096, batch=1, dtype="int4"
    )
    assert value(int4, "min_gpus") == 1


def test_every_number_comes_with_a_formula():
    for rows in (est.budget(1e4, get_gpu("l4")), est.training_memory(1e9, gpus=4, sharding="zero2")):
        assert all(row["formula"] for row in rows.values())
    assert all(gpu.source and gpu.price_per_hour > 0 for gpu in GPUS.values())
    assert get_gpu("t4").peak_flops("bf16") == 65e12  # no bf16 on T4: fp16 tensor cores


# --- bad input ------------------------------------------------------------------------------------


def test_unknown_model_and_gpu_suggest_the_nearest():
    with pytest.raises(UserError, match="Did you mean 'llama3-8b'"):
        get_model("llama3-8")
    with pytest.raises(UserError, match=r"--gpu 'h10'.*Did you mean 'h100'"):
        get_gpu("h10")


def test_config_missing_a_field_names_it_and_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 64,
                "vocab_size": 100,
            }
        )
    )
    with pytest.raises(UserError, match=r"config.json: missing 'hidden_size'"):
        model_from_config(path)
    path.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_hidden_layers": 2,
                "hidden_size": 32,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 64,
                "vocab_size": 100,
            }
        )
    )
    spec = model_from_config(path)
    # 2 layers * (q,o 2*32*32 + k,v 2*32*16 + gated MLP 3*32*64 + 2 norms 64) + final norm + untied emb + head
    assert spec.params == 2 * (2048 + 1024 + 6144 + 64) + 32 + 2 * 100 * 32


@pytest.mark.parametrize(
    "call, option",
    [
        (lambda: est.training_flops(7e9, 0), "--tokens"),
        (lambda: est.training_flops(7e9, -1e9), "--tokens"),
        (lambda: est.training_time(1e20, get_gpu("h100"), 8, mfu=1.5), "--mfu"),
        (lambda: est.training_time(1e20, get_gpu("h100"), 0), "--gpus"),
        (lambda: est.budget(-5, get_gpu("h100")), "--dollars"),
        (lambda: est.training_memory(7e9, sharding="zero4"), "--sharding"),
    ],
)
def test_bad_numbers_name_the_option(call, option):
    with pytest.raises(UserError, match=option):
        call()


def test_serve_that_cannot_fit_on_64_gpus_says_why():
    m = get_model("llama3-405b")
    with pytest.raises(UserError) as info:
        est.serving(m.params, m.layers, m.kv_heads, m.head_dim, get_gpu("t4"), context=1_000_000, batch=8)
    message = str(info.value)
    assert "weights 810 GB" in message and "KV cache" in message and "64 x t4" in message
    assert "--context" in message and "int4" in message


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_train_sweep_json():
    result = runner.invoke(
        plan_app,
        [
            "train",
            "--model",
            "gpt3-175b",
            "--tokens",
            "300e9",
            "--gpu",
            "a100-80gb",
            "--gpus",
            "1024,2048",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    plans = json.loads(result.output)
    assert [p["gpus"] for p in plans] == [1024, 2048]
    days = [p["estimates"]["time_days"]["value"] for p in plans]
    assert days[0] == pytest.approx(2 * days[1])
    assert plans[0]["estimates"]["training_flops"]["value"] == pytest.approx(3.15e23)


def test_cli_tables_show_formulas():
    result = runner.invoke(plan_app, ["serve", "--model", "llama3-8b", "--gpu", "l4", "--batch", "4"])
    assert result.exit_code == 0, result.output
    assert "kv_cache_gb" in result.output and "2 * layers * kv_heads * head_dim" in result.output
    result = runner.invoke(
        plan_app, ["finetune", "--model", "llama3-8b", "--tokens", "1e8", "--method", "qlora"]
    )
    assert result.exit_code == 0, result.output
    assert "frozen base" in result.output
    result = runner.invoke(plan_app, ["budget", "--dollars", "10000", "--gpu", "a100-80gb", "--price", "1.5"])
    assert result.exit_code == 0, result.output
    assert "sqrt(C / (6 * 20))" in result.output


def test_cli_bad_input_raises_user_errors():
    result = runner.invoke(plan_app, ["train", "--model", "llama3-8b", "--params", "7e9"])
    assert isinstance(result.exception, UserError) and "exactly one of" in str(result.exception)
    result = runner.invoke(plan_app, ["train", "--model", "llama3-8b", "--tokens", "1e12", "--gpus", "8,x"])
    assert isinstance(result.exception, UserError) and "--gpus" in str(result.exception)
    result = runner.invoke(plan_app, ["serve", "--params", "7e9"])
    assert isinstance(result.exception, UserError) and "--config" in str(result.exception)


def test_run_gives_the_exact_parameter_count_of_a_packaged_model(tmp_path):
    from modelfoundry.models.registry import build_model
    from modelfoundry.plan.models import model_from_run
    from modelfoundry.predictor import save_package

    model = build_model("cnn", (1, 8, 8), 10, width=4)
    spec = {
        "task": "image_classification",
        "model": {"name": "cnn", "options": {"width": 4}},
        "input_shape": [1, 8, 8],
        "labels": [str(i) for i in range(10)],
        "preprocessing": {"kind": "image", "size": [8, 8], "channels": 1},
        "run_id": "tiny",
    }
    save_package(tmp_path / "run" / "model", model, spec)
    planned = model_from_run(tmp_path / "run")
    assert planned.params == sum(
        p.numel() for p in model.parameters()
    )  # BatchNorm statistics are not parameters


def test_run_without_a_package_is_a_user_error(tmp_path):
    from modelfoundry.plan.models import model_from_run

    (tmp_path / "unfinished").mkdir()
    with pytest.raises(UserError, match="no model package"):
        model_from_run(tmp_path / "unfinished")


def test_calibrate_measures_this_machine_and_cpu_plans_use_it(tmp_path, monkeypatch):
    from modelfoundry.plan import calibrate

    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path))
    with pytest.raises(UserError, match="foundry plan calibrate"):
        get_gpu("cpu")
    measured = calibrate.measure(size=128, repeats=1)
    assert measured["matmul_fp32_flops"] > 1e8 and measured["bandwidth_bytes_s"] > 1e8
    assert 0 < measured["mfu"] < 5  # small models are timing-noisy; a ratio, not a claim of accuracy
    assert 0 < measured["step_seconds"] + measured["module_step_seconds"] < 0.1  # foundry's loop, per step
    calibrate.save(measured)
    cpu = get_gpu("cpu")
    assert cpu.peak_flops(cpu.half_precision) == pytest.approx(measured["matmul_fp32_flops"])
    plan = est.training_time(6e12, cpu, 1, mfu=0.5)
    assert plan["time_seconds"]["value"] == pytest.approx(6e12 / (measured["matmul_fp32_flops"] * 0.5))


def test_runs_count_their_training_flops_on_the_real_model(tmp_path, monkeypatch):
    import torch

    from modelfoundry.plan.check import forward_flops_per_example, plan_vs_measured

    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path))
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    assert forward_flops_per_example(model, torch.zeros(1, 10)) == 2 * (10 * 20 + 20 * 3)  # 2 per weight
    plan = plan_vs_measured(
        model, torch.zeros(1, 10), train_examples=100, val_examples=10, epochs=2, measured_seconds=1.0
    )
    assert plan["training_flops"] == 2 * (3 * 520 * 100 + 520 * 10)
    assert (
        plan["predicted_seconds"] is None and "foundry plan calibrate" in plan["note"]
    )  # nothing measured yet


@pytest.mark.parametrize(
    "content",
    [
        '{"matmul_fp32_flops": 1',
        "{}",
        '{"matmul_fp32_flops": -1}',
        "[]",
        (
            '{"matmul_fp32_flops": 1e11, "bandwidth_bytes_s": 1e10, "train_flops": 1e10, '
            '"mfu": 0.1, "memory_gb": 8, "step_seconds": -0.001}'
        ),
    ],
)
def test_a_damaged_calibration_file_is_named_and_never_breaks_training(tmp_path, monkeypatch, content):
    import torch

    from modelfoundry.plan.check import plan_vs_measured

    monkeypatch.setenv("FOUNDRY_HOME", str(tmp_path))
    (tmp_path / "calibration.json").write_text(content)
    with pytest.raises(UserError, match="calibration.json.*foundry plan calibrate"):
        get_gpu("cpu")
    plan = plan_vs_measured(torch.nn.Linear(4, 2), torch.zeros(1, 4), 10, 0, 1, 1.0)
    assert plan["predicted_seconds"] is None and "calibration.json" in plan["note"]


def test_counted_flops_include_attention_on_the_cpu():
    """scaled_dot_product_attention runs a CPU flash kernel that FlopCounterMode alone counts as zero."""
    import torch

    from modelfoundry.models.registry import build_model
    from modelfoundry.plan.check import forward_flops_per_example

    tokens, width = 40, 32
    model = build_model(
        "transformer", (64,), 2, {"vocab_size": 100, "pad_id": 0}, width=width, depth=1, heads=2
    )
    matmuls = 2 * tokens * width * (3 * width + width + 2 * 4 * width) + 2 * width * 2  # qkv, proj, mlp, head
    attention = 4 * tokens * tokens * width  # q @ k^T and weights @ v
    assert forward_flops_per_example(model, torch.randint(1, 100, (1, tokens))) == matmuls + attention


def _training_plan(model: str, gpu: str, gpus: int, **options):
    from modelfoundry.plan.cli import training_plan

    settings = {
        "tokens": 1e9,
        "mfu": 0.4,
        "price": None,
        "sharding": "none",
        "optimizer": "adamw",
        "seq_len": 2048,
        "micro_batch": 1,
        "recompute": False,
        **options,
    }
    return training_plan(get_model(model), gpu_name=gpu, gpus=gpus, **settings)


def test_a_plan_that_does_not_fit_names_the_sharding_that_would():
    plan = _training_plan("llama-7b", "a100-80gb", 8)  # 112 GB of AdamW states on each 80 GB GPU
    assert value(plan["estimates"], "fits") == 0
    assert plan["hints"][0].startswith("--sharding zero1 fits on these 8 GPUs")
    assert any("adam8bit" in hint for hint in plan["hints"])


def test_a_plan_that_needs_more_gpus_names_the_fewest_under_zero3():
    plan = _training_plan("llama3-70b", "h100", 8, recompute=True)
    states = 16 * get_model("llama3-70b").params / 1e9
    gpus = int(plan["hints"][0].split("--gpus ")[1].split(":")[0])
    usable, activations = 80 * est.USABLE_MEMORY, value(plan["estimates"], "activations_gb")
    assert states / gpus + activations <= usable < states / (gpus - 1) + activations  # the fewest that fit
    fitted = _training_plan("llama3-70b", "h100", gpus, recompute=True, sharding="zero3")
    assert value(fitted["estimates"], "fits") == 1 and fitted["hints"] == []


def test_when_activations_are_the_problem_the_hint_says_so_first():
    plan = _training_plan("llama-7b", "a100-80gb", 2, seq_len=4096, micro_batch=4)
    assert plan["hints"][0].startswith("activations are") and "--recompute" in plan["hints"][0]
