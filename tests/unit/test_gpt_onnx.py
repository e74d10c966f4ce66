"""The GPT's ONNX graph with past keys and values: the same next-token probabilities as GPT.forward for a
prompt and for tokens fed one at a time, greedy text equal to PyTorch's cached decoding, and an int8 variant
that stays close."""

from __future__ import annotations

import pytest
import torch

from modelfoundry.compress import gpt_onnx
from modelfoundry.generation.decode import stream
from modelfoundry.generation.tokenizer import CharTokenizer
from modelfoundry.models.gpt import GPT, GPTConfig


@pytest.mark.parametrize(
    "options",
    [{}, {"positions": "rope", "n_kv_head": 2, "norm": "rmsnorm", "mlp": "swiglu"}],
    ids=["gpt2-like", "llama-like"],
)
def test_the_graph_with_pasts_matches_pytorch_and_int8_stays_close(tmp_path, options):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=4, n_embd=32, block_size=32, **options)).eval()
    path = tmp_path / "model.onnx"
    gpt_onnx.export_gpt(gpt, path)
    prompts = torch.randint(0, 40, (3, 7))
    assert gpt_onnx.check_parity(gpt, path, prompts) < 1e-5
    gpt_onnx.quantize_int8(path, tmp_path / "int8.onnx")
    assert gpt_onnx.parity(gpt, gpt_onnx.session(tmp_path / "int8.onnx"), prompts) < 0.05
    assert (tmp_path / "int8.onnx").stat().st_size < 0.8 * path.stat().st_size  # the embedding stays fp32


def test_greedy_text_from_the_graph_equals_pytorch_cached_decoding(tmp_path):
    tokenizer = CharTokenizer.train(["abcdefghij klmnop"])
    torch.manual_seed(1)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=32)
    gpt = GPT(config).eval()
    gpt_onnx.export_gpt(gpt, tmp_path / "model.onnx")
    tokenizer.eos_id = None  # a random model may pick the end-of-text token: decode all 20 here
    expected = "".join(stream(gpt, tokenizer, "abc", 20, temperature=0))
    ids = gpt_onnx.greedy(gpt_onnx.session(tmp_path / "model.onnx"), config, tokenizer.encode("abc"), 20)
    assert tokenizer.decode(ids) == expected and len(ids) == 20
