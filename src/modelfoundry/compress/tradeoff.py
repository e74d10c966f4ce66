"""What each compressed variant costs in accuracy and buys in size and speed, in one table.

Every model (the original, its fp32 ONNX export, and each variant run made from it) is scored on
the original run's whole test split, encoded once, and timed on the same batches: latency p50/p99
at batch 1 and batch 32, throughput at 32. Writes `compression.json` and `compression.html`
(table + size/latency vs accuracy plots with the Pareto front) into the original run's folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from modelfoundry.compress.variants import parent_run_of
from modelfoundry.runfiles import atomic_write, atomic_write_json, runs_root


def variants_of(parent: Path) -> list[Path]:
    """Variant runs made from `parent` (their model.json says so), oldest first."""
    found = []
    for folder in sorted(runs_root().glob(f"{parent.name}-*")):
        spec_path = folder / "model" / "model.json"
        if (
            spec_path.is_file()
            and json.loads(spec_path.read_text()).get("variant", {}).get("of_run") == parent.name
        ):
            found.append(folder)
    return found


def measure_all(run: str | Path, repeats: int = 50) -> dict:
    from modelfoundry.compress.make import original_config
    from modelfoundry.config import load_config
    from modelfoundry.data.prepare import prepare
    from modelfoundry.predictor import load

    parent = parent_run_of(run)
    config, base_dir = original_config(parent)
    cfg, _ = load_config(config)
    data = prepare(cfg, base_dir)
    test = data.test if data.test is not None else data.val
    batch1, batch32 = _timing_batches(test)
    original = load(parent, backend="torch")
    contenders = [("original", parent, "torch")]
    if (original.path / "model.onnx").is_file():
        contenders.append(("original, ONNX fp32", parent, "onnx"))
    contenders += [(v.name.removeprefix(parent.name + "-"), v, "auto") for v in variants_of(parent)]
    rows, reference = [], None
    for name, folder, backend in contenders:
        predictor = load(folder, backend=backend)
        rows.append(_measure(name, folder, predictor, test, data.labels, batch1, batch32, repeats, reference))
        reference = reference if reference is not None else rows[-1].pop("_predictions")
        rows[-1].pop("_predictions", None)
    task = original.task_module
    quality = {
        "metric": task.retrain_metric,
        "higher_is_better": task.retrain_higher_is_better,
        "columns": [list(c) for c in task.variant_columns],
    }
    _mark_pareto(rows, quality)
    return {
        "quality": quality,
        "run": parent.name,
        "test_examples": len(test),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }


def _timing_batches(test) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch 1 and batch 32 inputs: for text, the examples around the median length (test is sorted by
    length)."""
    if hasattr(test, "ids"):
        middle = len(test) // 2
        start = max(0, min(middle - 16, len(test) - 32))
        from modelfoundry.data.text import TextData

        pick = TextData(test.ids[start : start + 32], test.targets[start : start + 32], test.pad)
        batch32 = next(pick.batches(32))[0]
        return next(TextData([test.ids[middle]], test.targets[:1], test.pad).batches(1))[0], batch32
    inputs = next(test.batches(32))[0]
    return inputs[:1], inputs


@torch.inference_mode()
def _measure(name, folder: Path, predictor, test, labels, batch1, batch32, repeats, reference) -> dict:
    from modelfoundry.training.loop import predict_logits

    model, task = predictor.model, predictor.task_module
    predictions = task.predictions(predict_logits(model, test, batch_size=256), predictor.spec)
    weights = predictor.path / ("model.onnx" if predictor.backend == "onnx" else "model.safetensors")
    return {
        "model": name,
        "run": folder.name,
        "backend": predictor.backend,
        "bytes": weights.stat().st_size,
        "parameters": _parameters(predictor, weights),
        **_latency(model, batch1, repeats * 4, "batch1"),
        **_latency(model, batch32, repeats, "batch32"),
        **task.variant_scores(predictions, test.targets.numpy(), predictor.spec, reference),
        "_predictions": predictions,
    }


def _latency(model, batch: torch.Tensor, repeats: int, tag: str) -> dict:
    for _ in range(max(3, repeats // 10)):
        model(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - started)
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    out = {f"{tag}_p50_ms": float(p50), f"{tag}_p99_ms": float(p99)}
    if tag == "batch32":
        out["throughput_per_s"] = float(len(batch) / (p50 / 1000))
    return out


def _parameters(predictor, weights: Path) -> int:
    if predictor.backend == "torch":
        return sum(p.numel() for p in predictor.model.parameters())
    import onnx

    graph = onnx.load(str(weights), load_external_data=False).graph
    return int(
        sum(int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) >= 1 and np.prod(t.dims) > 1)
    )


def _mark_pareto(rows: list[dict], quality: dict) -> None:
    """A row is on the front when no other row is at least as good on size, latency and quality and better
    on one."""
    sign = 1 if quality["higher_is_better"] else -1
    key = quality["metric"]

    def cost(row: dict) -> tuple:
        return row["bytes"], row["batch32_p50_ms"], -sign * row[key]

    for row in rows:
        row["pareto"] = not any(
            other is not row
            and all(a <= b for a, b in zip(cost(other), cost(row)))
            and cost(other) != cost(row)
            for other in rows
        )


def write_report(run: str | Path, result: dict) -> Path:
    """compression.json + compression.html in the original run's folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modelfoundry.evaluate.report import _CSS, _esc, _png_tag

    parent = parent_run_of(run)
    atomic_write_json(parent / "compression.json", result)
    rows = result["rows"]
    quality = result.get("quality") or {
        "metric": "accuracy",
        "columns": [
            ["accuracy", "accuracy", ".4f"],
            ["f1_macro", "F1 macro", ".4f"],
            ["agreement", "agrees with original", ".1%"],
        ],
    }
    metric = quality["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in (
        (axes[0], "bytes", "file size (MB)"),
        (axes[1], "batch32_p50_ms", "latency at batch 32, p50 (ms)"),
    ):
        scale = 1e6 if key == "bytes" else 1
        for row in rows:
            ax.scatter(
                row[key] / scale,
                row[metric],
                s=60,
                marker="o" if row["pareto"] else "x",
                color="tab:green" if row["pareto"] else "tab:gray",
            )
            ax.annotate(
                row["model"],
                (row[key] / scale, row[metric]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        front = sorted((r for r in rows if r["pareto"]), key=lambda r: r[key])
        ax.plot(
            [r[key] / scale for r in front],
            [r[metric] for r in front],
            color="tab:green",
            lw=1,
            label="Pareto front",
        )
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {metric}")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    plot = _png_tag(fig, f"size and latency against {metric}, Pareto front in green")
    plt.close(fig)
    head = (
        "model",
        "backend",
        "size",
        "parameters",
        "p50 / p99 ms, batch 1",
        "p50 / p99 ms, batch 32",
        "throughput /s (batch 32)",
        *[heading for _, heading, _ in quality["columns"]],
        "Pareto",
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{_esc(v)}</td>"
            for v in (
                r["model"],
                r["backend"],
                f"{r['bytes'] / 1e6:.2f} MB",
                f"{r['parameters']:,}",
                f"{r['batch1_p50_ms']:.2f} / {r['batch1_p99_ms']:.2f}",
                f"{r['batch32_p50_ms']:.2f} / {r['batch32_p99_ms']:.2f}",
                f"{r['throughput_per_s']:,.0f}",
                *[format(r[k], spec) if r.get(k) is not None else "-" for k, _, spec in quality["columns"]],
                "yes" if r["pareto"] else "",
            )
        )
        + "</tr>"
        for r in rows
    )
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>compression: {_esc(parent.name)}</title>"
        f"<style>{_CSS}</style></head><body><main><section><h1>Compression trade-offs</h1>"
        f"<p>{_esc(parent.name)}: every model scored on the same {result['test_examples']} test examples; "
        f"latency timed on this machine with {result['threads']} threads ({_esc(result['measured'])}). "
        f"Size is the weights file a server loads.</p>"
        f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{body}</table>{plot}"
        "</section></main></body></html>\n"
    )
    path = parent / "compression.html"
    atomic_write(path, page)
    return path
