"""pretrained_lm's pieces on a tiny random Llama: the GPT mapping, LoRA, instruction data, SFT metrics."""

from __future__ import annotations

import pytest
import torch

from modelfoundry.errors import UserError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_LLM_CACHE", str(tmp_path / "llm-cache"))


def test_gpt_gives_the_logits_of_transformers_llama(tiny_llama):
    from transformers import LlamaForCausalLM

    from modelfoundry.llm.convert import load_base

    reference = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    gpt, tokenizer, base, sha = load_base(tiny_llama)
    ids = torch.tensor([tokenizer.encode("<|im_start|>user\nhello there<|im_end|>\n")])
    with torch.no_grad():
        expected = reference(ids).logits
        got = gpt(ids)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert len(sha) == 64 and base.gguf_file is None
    again, *_ = load_base(tiny_llama)  # from the cache now
    with torch.no_grad():
        assert torch.equal(again(ids), got)
    with pytest.raises(
        UserError, match="model.block_size: 300 is longer than the context .* use 256 or less"
    ):
        load_base(tiny_llama, block_size=300)


def test_tokenizer_follows_the_generation_interface(tiny_llama):
    from modelfoundry.llm.convert import load_base

    _, tokenizer, _, _ = load_base(tiny_llama)
    text = tokenizer.apply_chat([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(text)
    assert ids[0] == 1 and tokenizer.eos_id == 2
    assert tokenizer.decode(tokenizer.encode("héllo wörld")) == "héllo wörld"


def _tiny_gpt(tiny_llama):
    from modelfoundry.llm.convert import load_base

    return load_base(tiny_llama)


def test_lora_starts_as_the_base_model_and_merges_back_to_the_same_outputs(tiny_llama):
    from modelfoundry.llm import lora
    from modelfoundry.llm.convert import LINEAR_NAMES

    gpt, tokenizer, *_ = _tiny_gpt(tiny_llama)
    ids = torch.tensor([tokenizer.encode("some text to score")])
    with torch.no_grad():
        before = gpt(ids)
    wrapped = lora.add_lora(gpt, ["q_proj", "v_proj"], r=4, alpha=8, dropout=0.0, aliases=LINEAR_NAMES)
    assert wrapped == ["blocks.0.attn.q", "blocks.0.attn.v", "blocks.1.attn.q", "blocks.1.attn.v"]
    trainable, total = lora.trainable_parameters(gpt)
    assert trainable == 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4) and trainable < total / 10
    with torch.no_grad():
        assert torch.equal(gpt(ids), before)  # B starts at zero
        for layer in lora.lora_layers(gpt).values():
            layer.lora_B.normal_()
        adapted = gpt(ids)
        assert not torch.allclose(adapted, before, atol=1e-3)
        lora.merge(gpt)
        assert torch.allclose(gpt(ids), adapted, atol=1e-5)
        lora.unmerge(gpt)
        assert torch.allclose(gpt(ids), adapted, atol=1e-5)
    state = lora.adapter_state(gpt)
    assert sorted(state) == sorted(f"{n}.lora_{p}" for n in wrapped for p in "AB")


def test_lora_all_linear_leaves_the_tied_output_layer_alone(tiny_llama):
    from modelfoundry.llm import lora

    gpt, *_ = _tiny_gpt(tiny_llama)
    wrapped = lora.add_lora(gpt, "all-linear", r=2, alpha=4)
    assert len(wrapped) == 2 * 7 and "lm_head" not in wrapped
    assert gpt.lm_head.weight is gpt.wte.weight and not gpt.wte.weight.requires_grad


def test_lora_targets_that_match_nothing_list_the_linear_layers(tiny_llama):
    from modelfoundry.llm import lora
    from modelfoundry.llm.convert import LINEAR_NAMES

    gpt, *_ = _tiny_gpt(tiny_llama)
    with pytest.raises(UserError) as error:
        lora.add_lora(gpt, ["q_proj", "query"], aliases=LINEAR_NAMES)
    message = str(error.value)
    assert "'query'" in message and "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in message
    assert "lm_head" not in message.split("layers:")[1].split("(", maxsplit=1)[0]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_instruction_rows_learn_the_response_tokens_only(tiny_llama, tmp_path):
    from modelfoundry.llm.instruct import IGNORE, Batches, read_examples

    _, tokenizer, *_ = _tiny_gpt(tiny_llama)
    data = _write(
        tmp_path / "sft.jsonl",
        '{"prompt": "2+2?", "response": "4"}\n{"prompt": "Capital of France?", "response": "Paris"}\n',
    )
    examples = read_examples(data, tokenizer, max_length=64)
    first = examples[0]
    learnt = [t for t in first.labels if t != IGNORE]
    assert tokenizer.decode(learnt) == "4\n"  # the answer and its end-of-turn (special tokens not shown)
    assert tokenizer.hf.decode(learnt) == "4<|im_end|>\n"
    text = tokenizer.hf.decode(first.ids)
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    ids, labels = next(Batches(examples, tokenizer.pad_id).batches(2))
    assert ids.shape == labels.shape == (2, max(len(e.ids) for e in examples))
    assert (labels[0, len(first.ids) :] == IGNORE).all()  # padding is never learnt


def test_multi_turn_messages_learn_every_assistant_turn(tiny_llama, tmp_path):
    import json

    from modelfoundry.llm.instruct import IGNORE, read_examples

    _, tokenizer, *_ = _tiny_gpt(tiny_llama)
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao"},
    ]
    data = _write(tmp_path / "chat.jsonl", json.dumps({"messages": turns}) + "\n")
    (example,) = read_examples(data, tokenizer, max_length=128)
    learnt = tokenizer.hf.decode([t for t in example.labels if t != IGNORE])
    assert learnt == "Hello<|im_end|>\nCiao<|im_end|>\n"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            '{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}',
            "out of order",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}',
            "assistant turn is empty",
        ),
        ('{"prompt": "' + "long " * 80 + '", "response": "ok"}', "the prompt alone is"),
        ('{"question": "x", "answer": "y"}', "row 2, column 'prompt': missing"),
    ],
)
def test_bad_instruction_rows_are_named(tiny_llama, tmp_path, rows, expected):
    from modelfoundry.llm.instruct import read_examples

    _, tokenizer, *_ = _tiny_gpt(tiny_llama)
    good = (
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
        if "messages" in rows
        else '{"prompt": "fine", "response": "yes"}'
    )
    data = _write(tmp_path / "bad.jsonl", good + "\n" + rows + "\n")
    with pytest.raises(UserError) as error:
        read_examples(data, tokenizer, max_length=64)
    assert expected in str(error.value) and "row 2" in str(error.value)


def test_instruction_files_need_prompt_and_response_columns(tiny_llama, tmp_path):
    from modelfoundry.llm.instruct import read_examples

    _, tokenizer, *_ = _tiny_gpt(tiny_llama)
    with pytest.raises(UserError, match="needs `prompt` and `response` columns.*it has question, answer"):
        read_examples(_write(tmp_path / "qa.csv", "question,answer\nx,y\n"), tokenizer, max_length=64)


def test_text_files_are_continued_pretraining(tiny_llama, tmp_path):
    from modelfoundry.llm.instruct import IGNORE, read_examples

    _, tokenizer, *_ = _tiny_gpt(tiny_llama)
    examples = read_examples(_write(tmp_path / "notes.txt", "abcdefghij" * 10), tokenizer, max_length=32)
    assert len(examples) == 4 and all(IGNORE not in e.labels for e in examples)
    assert examples[0].labels[:-1] == examples[0].ids[1:]


def test_exact_match_and_rouge_l_follow_squad_and_rouge():
    from modelfoundry.llm.metrics import exact_match, rouge_l, scores

    assert exact_match("The Paris!", "paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("", "something") == 0.0
    assert scores(["Positive.", "no"], ["positive", "yes"]) == {
        "exact_match": 0.5,
        "rouge_l": 0.5,
        "examples": 2,
    }


def test_a_path_that_is_not_a_causal_lm_says_what_is_missing(tmp_path):
    import json

    from modelfoundry.llm import hf

    with pytest.raises(UserError, match="does not exist"):
        hf.locate(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no config.json, so it is not a Hugging Face model folder"):
        hf.locate(tmp_path)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 10, "hidden_size": 8}
    (encoder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="BertForMaskedLM, not a causal language model.*no \\*ForCausalLM"):
        hf.load_transformers(hf.locate(encoder))


def test_a_package_whose_base_model_changed_is_refused(tiny_llama):
    from modelfoundry.models.pretrained_lm import build_pretrained_lm

    with pytest.raises(UserError, match="was trained on one with sha256 000000000000"):
        build_pretrained_lm((64,), 0, path=str(tiny_llama), base_sha256="0" * 64)


def test_batched_greedy_decoding_equals_argmax_of_the_full_forward_prompt_by_prompt(tiny_llama):
    from modelfoundry.llm.generate import greedy_ids

    gpt, tokenizer, *_ = _tiny_gpt(tiny_llama)
    torch.manual_seed(3)
    with torch.no_grad():  # weights that answer more than newlines
        for p in gpt.parameters():
            p.normal_(0, 0.3)
    prompts = [
        tokenizer.encode(tokenizer.apply_chat([{"role": "user", "content": q}]))
        for q in ("hi", "a longer one")
    ]
    expected = []
    for ids in prompts:  # no cache, no padding: the whole context again for every token
        ids, new = list(ids), []
        with torch.no_grad():
            for _ in range(6):
                token = int(gpt(torch.tensor([ids]))[0, -1].argmax())
                if token in tokenizer.stop_ids:
                    break
                new.append(token)
                ids.append(token)
        expected.append(new)
    assert greedy_ids(gpt, tokenizer, prompts, max_new_tokens=6) == expected
    assert len(expected[0]) == 6 and expected[0] != expected[1]


def test_the_default_base_model_is_the_gguf_file_of_the_installed_wheel():
    from modelfoundry.llm import hf

    base = hf.locate(None)
    assert base.reference == hf.DEFAULT and base.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert base.path.is_file() and base.path.stat().st_size > 50e6  # found without importing the package


def test_a_gguf_quantisation_type_transformers_cannot_load_is_named_with_the_types_that_load(tmp_path):
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    from modelfoundry.llm.convert import load_base

    path = tmp_path / "tiny-q8_1.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    _, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_1]  # 32 values per block
    quantised = np.zeros((32, block_bytes), dtype=np.uint8)  # 32 rows of one block each
    writer.add_tensor("blk.0.attn_q.weight", quantised, raw_dtype=GGMLQuantizationType.Q8_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError) as info:
        load_base(path)
    message = str(info.value)
    assert str(path.resolve()) in message
    assert "quantisation type Q8_1 (e.g. tensor blk.0.attn_q.weight)" in message
    assert "Types that load: F32, F16, Q4_0, Q4_1" in message and "Q8_0" in message
    assert "F32 (e.g." not in message  # the loadable type of the other tensor is not blamed
    assert "llama-quantize" in message


def test_a_packed_row_gives_each_example_the_loss_it_has_alone(tiny_llama):
    from torch.nn import functional as F

    from modelfoundry.llm.instruct import IGNORE, Packed, tokenize
    from modelfoundry.llm.sft import learnt_logits

    gpt, tokenizer, *_ = _tiny_gpt(tiny_llama)  # rotary positions, grouped-query attention
    gpt.eval()
    questions = ["2+2?", "Capital of France?", "Name a colour.", "Why is the sky blue, in short?", "Hi"]
    answers = ["4", "Paris", "Red", "Air scatters blue light most.", "Hello!"]
    conversations = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        for q, a in zip(questions, answers)
    ]
    examples = tokenize(tokenizer, conversations, 128, "test")
    packed = Packed(examples, tokenizer.pad_id, 128)
    assert len(packed) < len(examples)  # several examples share a row
    alone = {}
    with torch.no_grad():
        for i, e in enumerate(examples):
            logits = gpt(torch.tensor([e.ids]))[0]
            alone[i] = F.cross_entropy(logits, torch.tensor(e.labels), ignore_index=IGNORE).item()
        together = {}
        for ids, labels, segments in packed.batches(2):
            logits, targets = learnt_logits(gpt, ids, labels, segments)
            losses = F.cross_entropy(logits, targets, reduction="none")
            owner = segments[labels != IGNORE]
            for i in owner.unique().tolist():
                together[i] = losses[owner == i].mean().item()
            assert (labels[segments == len(examples)] == IGNORE).all()  # padding is never learnt
    assert together.keys() == alone.keys()
    for i, loss in alone.items():
        assert abs(together[i] - loss) < 1e-5, (i, together[i], loss)
    with torch.no_grad():  # without the mask the examples would see each other: the test can fail
        ids, labels, segments = next(packed.batches(1))
        unmasked = F.cross_entropy(gpt(ids)[0], labels[0], ignore_index=IGNORE, reduction="none")
        masked = F.cross_entropy(
            gpt(ids, segments=segments)[0], labels[0], ignore_index=IGNORE, reduction="none"
        )
        assert (unmasked - masked).abs().max() > 1e-3
