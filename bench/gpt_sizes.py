"""Which default GPT size trains best in a wall-clock budget on Shakespeare (the sweep behind
text_generation's default sizing rule; results in bench/RESULTS.md, "GPT default sizing").

Each candidate shape is trained by foundry's text_generation task on the same split, tokenizer rule and
budget (`train.max_minutes`), one after another; the table lists validation bits per byte, the steps and
batch foundry chose, and training tokens/s. `--auto` adds foundry's own default (no sizes given).

    .venv/bin/python bench/gpt_sizes.py --minutes 1 --shapes 2x2x64 4x4x128 4x2x128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpt import shakespeare  # bench/gpt.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument(
        "--shapes",
        nargs="*",
        default=[],
        help="LAYERSxHEADSxWIDTH[xCONTEXT][:STEPS:BATCH] (STEPS and BATCH: that many steps, no budget)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--auto", action="store_true", help="also foundry's default (no sizes given)")
    parser.add_argument("--out", default=None, help="append one JSON line per run to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import modelfoundry as mf

    folder = shakespeare()
    os.environ["FOUNDRY_HOME"] = tempfile.mkdtemp(prefix="bench-gpt-sizes-")
    runs = [None] * args.auto + args.shapes
    for spec in runs:
        model, train = {"name": "gpt"}, {"max_minutes": args.minutes}
        if spec:
            shape, *steps = spec.split(":")
            model.update(zip(("n_layer", "n_head", "n_embd", "block_size"), map(int, shape.split("x"))))
            if steps:
                train = {"max_steps": int(steps[0]), "batch_size": int(steps[1])}
        start = time.perf_counter()
        run = mf.train(
            {"task": "text_generation", "data": {"source": str(folder)}, "train": train, "model": model}
        )
        m = run.metrics
        row = {
            "shape": "x".join(str(m["model"][k]) for k in ("n_layer", "n_head", "n_embd", "block_size")),
            "spec": spec,
            "minutes": args.minutes,
            "val_bpb": round(m["val"]["bits_per_byte"], 4),
            "params": m["model"]["parameters"],
            "epochs": len(m["history"]),
            "cpu_s": round(time.process_time(), 1),
            "chosen": m["recipe"]["chosen"],
            "train_s": round(sum(r["seconds"] for r in m["history"]), 1),
            "wall_s": round(time.perf_counter() - start, 1),
            "tokens_per_s": round(m["throughput"]["tokens_per_second"]),
            "mfu": round(m["throughput"]["mfu"], 3),
            "load": os.getloadavg()[0],
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
