"""Fine-tuning a pretrained LLM through the real CLI, on a tiny random Llama checkpoint (tests/tiny_llama.py):
LoRA SFT with the base model scored beside it, the adapter-only package, chat, export of merged weights and
GGUF, and the bad inputs each named with its fix."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from e2e_helpers import assert_ok, assert_user_error, foundry, one_line

pytestmark = pytest.mark.slow  # trains models


def write_sft(path: Path, rows: int = 40) -> Path:
    rng = random.Random(0)
    lines = []
    for _ in range(rows):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        lines.append(json.dumps({"prompt": f"What is {a} plus {b}?", "response": str(a + b)}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_run(folder: Path, llama: Path, rows: int = 40, **train) -> tuple[Path, object]:
    write_sft(folder / "sft.jsonl", rows)
    config = {
        "task": "text_generation",
        "data": {"source": "sft.jsonl"},
        "model": {"name": "pretrained_lm", "path": str(llama)},
        "train": {"epochs": 2, "lr": 0.01, **train},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    result = foundry("train", "config.yaml", cwd=folder, home=folder / "home")
    assert_ok(result)
    run = next(p for p in (folder / "home").iterdir() if (p / "metrics.json").is_file())
    return run, result


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("lora")
    # packed rows here (the full fine-tune and the retrain below train on padded batches)
    run, result = train_run(folder, tiny_llama, lora={"r": 4, "targets": ["q_proj", "v_proj"]}, packing=True)
    return folder, run, result


def test_lora_sft_scores_the_base_beside_the_fine_tuned_model_and_packages_the_adapter_alone(lora_run):
    _, run, result = lora_run
    assert "base model on test: response loss" in result.stderr
    assert "packing: 28 training examples in 5 rows" in one_line(result.stderr + result.stdout)
    assert "test exact_match" in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    test, base = metrics["test"], metrics["base"]["test"]
    for m in (test, base):
        assert {"loss", "perplexity", "exact_match", "rouge_l"} <= set(m) and m["examples"] == 8
    assert test["loss"] < base["loss"]  # it learnt the answers' tokens
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"] / 10
    # the planner's prediction kept beside the measured seconds (no calibration here: it says how to get one)
    assert metrics["plan"]["measured_seconds"] > 0 and "foundry plan calibrate" in metrics["plan"]["note"]
    from safetensors.torch import load_file

    adapter = load_file(str(run / "model" / "model.safetensors"))
    assert adapter and all(".lora_" in k for k in adapter)  # the adapter alone, not the base weights
    spec = json.loads((run / "model" / "model.json").read_text())
    assert len(spec["model"]["options"]["base_sha256"]) == 64
    report = (run / "report.html").read_text()
    assert "Fine-tuned vs base model" in report and "base model answer" in report
    assert len((run / "heldout.jsonl").read_text().splitlines()) == 8


def test_plan_finetune_reads_the_base_models_shape_from_an_adapter_package(lora_run):
    folder, run, _ = lora_run
    args = ("--run", run, "--method", "lora", "--lora-rank", "4", "--tokens", "1e5", "--json")
    plan = foundry("plan", "finetune", *args, cwd=folder, home=folder / "home")
    assert_ok(plan)
    shown = json.loads(plan.stdout)
    total = json.loads((run / "metrics.json").read_text())["parameters"]["total"]
    assert shown["model"]["params"] == total and shown["model"]["layers"] == 2  # the base, not the adapter
    assert shown["estimates"]["trained_params"]["value"] < total / 10


def test_chat_keeps_the_conversation_and_streams_each_answer(lora_run):
    import modelfoundry as mf
    from modelfoundry.llm.chat import chat_loop

    _, run, _ = lora_run
    generator = mf.load(run)
    assert generator.tokenizer.chat_template  # the base model's own template
    lines, shown = iter(["What is 2 plus 3?", "And 4 plus 4?", ""]), []
    messages = chat_loop(generator, lambda _: next(lines), shown.append, max_new_tokens=4, temperature=0)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert "".join(shown).count("model> ") == 2
    greedy = generator.chat(messages[:1], max_new_tokens=4, temperature=0)
    assert messages[1]["content"] == greedy.strip()


def test_greedy_generate_guesses_from_the_prompt_and_prints_plain_greedy_text(lora_run):
    import modelfoundry as mf
    from modelfoundry.errors import UserError

    folder, run, _ = lora_run
    prompt = "What is 2 plus 3? What is 2 plus 3? What is 2 plus"
    result = foundry(
        "generate",
        run,
        prompt,
        "--temperature",
        "0",
        "--max-new-tokens",
        "24",
        cwd=folder,
        home=folder / "home",
    )
    assert_ok(result)
    generator = mf.load(run)
    plain = generator.generate(prompt, max_new_tokens=24, temperature=0, prompt_lookup=0)
    assert result.stdout == plain + "\n" and plain.strip()
    with pytest.raises(UserError, match=r"prompt_lookup: -1 must be a whole number >= 0 .*0 turns"):
        generator.generate(prompt, temperature=0, prompt_lookup=-1)


def test_bf16_precision_for_generate_and_serve(lora_run):
    import modelfoundry as mf
    from modelfoundry.errors import UserError
    from modelfoundry.serve.service import load_served

    folder, run, _ = lora_run
    args = ("generate", run, "What is 2 plus 3?", "--temperature", "0", "--max-new-tokens", "8")
    result = foundry(*args, "--precision", "bf16", cwd=folder, home=folder / "home")
    assert_ok(result)
    assert result.stdout.strip()  # an answer (which may differ from fp32's)
    served = load_served(str(run), precision="bf16")
    assert next(served.predictor.model.parameters()).dtype == torch.bfloat16
    assert served.predictor.generate("What is 2 plus 3?", max_new_tokens=4, temperature=0) is not None
    with pytest.raises(UserError, match="precision: 'fp16' is not one of fp32, bf16"):
        mf.load(run).with_precision("fp16")


def test_evaluate_scores_the_answers_of_new_instruction_data(lora_run):
    from modelfoundry.runner import evaluate

    folder, run, _ = lora_run
    metrics, where = evaluate(run, folder / "sft.jsonl")
    assert {"exact_match", "rouge_l", "loss", "perplexity"} <= set(metrics["test"])
    assert metrics["test"]["examples"] == 40 and (where / "report.html").is_file()


def test_export_merges_the_adapter_into_hugging_face_weights_and_writes_gguf(lora_run):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    folder, run, _ = lora_run
    home = folder / "home"
    merged = foundry("export", run, "--merge", cwd=folder, home=home)
    assert_ok(merged)
    assert "max logit difference" in one_line(merged.stdout)
    gguf = foundry("export", run, "--format", "gguf", cwd=folder, home=home)
    assert_ok(gguf)
    reader = GGUFReader(run / "export" / "model.gguf")
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight"} <= names
    assert "output.weight" not in names  # tied to the embedding
    assert reader.fields["tokenizer.chat_template"].contents().startswith("{% for message")
    hf = LlamaForCausalLM.from_pretrained(run / "export" / "merged").eval()
    from_gguf = AutoModelForCausalLM.from_pretrained(run / "export", gguf_file="model.gguf").eval()
    ids = torch.tensor([[1, 87, 85, 71, 84, 201, 2]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, from_gguf(ids).logits, atol=1e-4)


def test_full_fine_tuning_refuses_merge_and_a_resume_on_another_base(tmp_path, tiny_llama):
    run, _ = train_run(tmp_path, tiny_llama, rows=12, method="full", epochs=1)
    from modelfoundry.errors import UserError
    from modelfoundry.llm.export import export_hf

    with pytest.raises(UserError, match="is a full fine-tune .* no adapter to merge"):  # what --merge says
        export_hf(run / "model", tmp_path / "merged", merge=True)
    other = shutil.copytree(tiny_llama, tmp_path / "other-base")
    from tiny_llama import save_tiny_llama

    save_tiny_llama(other, seed=1)
    resumed = foundry(
        "train",
        "config.yaml",
        "--resume",
        "--run-dir",
        run,
        "--set",
        f"model.path={other}",
        cwd=tmp_path,
        home=tmp_path / "home",
    )
    assert_user_error(resumed, "--resume:", "was trained on a base model with sha256", "same base model file")


def test_served_chat_feedback_retrains_a_challenger_from_the_champions_adapter(lora_run, monkeypatch):
    import httpx

    import modelfoundry as mf
    from e2e_helpers import Server
    from modelfoundry.store.models import ModelStore

    folder, run, _ = lora_run
    home = folder / "home"
    monkeypatch.setenv("FOUNDRY_HOME", str(home))
    monkeypatch.delenv("FOUNDRY_DB", raising=False)
    ModelStore().set_alias("champion", ModelStore().get(run.name).id)
    server = Server("champion", cwd=folder, home=home)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            model = http.get("/v1/models").json()["data"][0]["id"]

            def ask(question: str) -> dict:
                body = {"model": model, "messages": [{"role": "user", "content": question}]}
                response = http.post("/v1/chat/completions", json={**body, "temperature": 0, "max_tokens": 4})
                assert response.status_code == 200, response.text
                return response.json()

            first = ask("What is 1 plus 1?")
            greedy = mf.load(run).chat(
                [{"role": "user", "content": "What is 1 plus 1?"}], max_new_tokens=4, temperature=0
            )
            assert first["choices"][0]["message"]["content"] == greedy  # the served model is the package
            for a in range(1, 9):  # the page's "better answer", as the page sends it
                answer = ask(f"What is {a} plus 1?")
                sent = {"request_id": answer["id"], "vote": "down", "better_answer": str(a + 1)}
                assert http.post("/v1/feedback", json=sent).status_code == 201
            assert (
                http.post("/v1/feedback", json={"request_id": first["id"], "vote": "up"}).status_code == 201
            )
            down = ask("What is 9 plus 9?")
            assert (
                http.post("/v1/feedback", json={"request_id": down["id"], "vote": "down"}).status_code == 201
            )
    finally:
        server.stop()

    result = foundry("retrain", "champion", "--promote", "--set", "train.epochs=1", cwd=folder, home=home)
    assert_ok(result)
    learnt = 8 + bool(first["choices"][0]["message"]["content"].strip())  # an empty answer voted up: nothing
    assert f"10 feedback rows -> {learnt} examples ({10 - learnt} teach no answer)" in one_line(result.stderr)
    assert "combined rouge_l" in result.stdout
    challenger = next(p for p in home.iterdir() if (p / "comparison.json").is_file())
    comparison = json.loads((challenger / "comparison.json").read_text())
    assert comparison["metric"] == "rouge_l" and comparison["examples"]["holdout"] == 8
    assert comparison["promoted"] == (comparison["gain"] > 0 and comparison["gain"] >= comparison["margin"])
    metrics = json.loads((challenger / "metrics.json").read_text())
    assert any(c.startswith("started from") for c in metrics["recipe"]["chosen"])  # the champion's adapter
    trained_on = (challenger / "config.yaml").read_text()
    assert "instructions.jsonl" in trained_on
