"""Explanations of single predictions: why the model said what it said about one input.

`explain(predictor, inputs, label)` asks the package's task, which decides how its inputs are explained
(tasks/: text by integrated gradients on the token embeddings, images by integrated gradients over the
pixels, table rows by LightGBM's SHAP values or integrated gradients over the encoded features, folded
back into the user's columns). Classification explains the probability of the predicted class (or of
`label`), regression the predicted value. This module holds what they share: integrated gradients
(Sundararajan et al. 2017) with its convergence delta, the refusals, and the HTML pieces (highlighted
tokens, a heat map over an image, a bar chart of contributions) that `foundry explain`, the report's
worst mistakes and the served page show.

Every explanation is a JSON-able dict: what it explains (`explains`, the label and probability or the
value), `method`, `output` (the number explained) and `baseline_output` (the same number for the
baseline input), `convergence_delta` (integrated gradients: sum of attributions - (output - baseline
output); near 0 means enough steps), `top` (the largest attributions by name, largest first), and the
task's own part (`tokens`, `heatmap` or `contributions`).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from modelfoundry.errors import InputError, UserError

MAX_INPUTS = 100  # inputs explained per call: each costs `steps` forward and backward passes
TOP = 10  # attributions `foundry explain` prints and `top` holds
MISTAKES_EXPLAINED = (
    8  # the report explains this many of the worst mistakes (each costs a backward pass per step)
)


def explain(predictor, inputs, label: str | None = None, steps: int | None = None) -> list[dict]:
    """One explanation per input (raw inputs as `Predictor.predict` takes them)."""
    check_explainable(predictor)
    if steps is not None and not 2 <= steps <= 1024:
        raise InputError(
            422, "steps", f"steps: {steps} is out of range; integrated gradients take 2 to 1024."
        )
    return predictor.task_module.explain(predictor, inputs, label, steps)


def check_explainable(predictor) -> None:
    """Explanations need the model's gradients (or LightGBM's trees): not an ONNX graph, not an ensemble."""
    path = predictor.path or "this package"
    if hasattr(predictor, "members"):
        runs = ", ".join(str(m.spec.get("run_id") or m.path) for m in predictor.members)
        raise InputError(
            422,
            "model",
            f"{path}: an ensemble has no single model to explain; explain one of its members' runs ({runs}).",
        )
    if predictor.backend == "onnx":
        variant = predictor.spec.get("variant", {})
        source = f" (run {variant['of_run']})" if variant.get("of_run") else ""
        raise InputError(
            422,
            "model",
            f"{path}: this {variant.get('kind', 'ONNX')} package holds only an ONNX graph, which has no "
            f"gradients to explain with; explain the original run{source} instead, or load this one with "
            "the torch backend.",
        )


def explain_mistakes(predictor, mistakes: list[dict], k: int = MISTAKES_EXPLAINED) -> list[dict]:
    """The report's worst mistakes, the first k each with the explanation of the class the model predicted
    (`explained`: HTML that shows the input with its attributions, `explains`: the summary line). A model
    that cannot be explained (an ONNX graph) leaves them as they are."""
    try:
        check_explainable(predictor)
    except UserError:
        return mistakes
    task = predictor.task_module
    explained = mistakes[:k]
    if not explained:
        return mistakes
    explanations = task.explain(predictor, [task.shown_input(m, predictor) for m in explained], None, None)
    for mistake, explanation in zip(explained, explanations):
        mistake["explained"] = task.explanation_html(explanation)
        mistake["explains"] = summary(explanation)
    return mistakes


def integrated_gradients(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    baseline: torch.Tensor,
    steps: int,
    chunk: int = 64,
) -> tuple[torch.Tensor, float, float, float]:
    """Integrated gradients of one input along the straight path from `baseline`.

    Args:
        forward: inputs (S, *shape) -> the explained number of each (S,).
        x, baseline: (*shape) the input (an image, a text's embeddings, encoded features) and where the
            path starts.
        steps: points on the path (midpoint rule), run `chunk` at a time.

    Returns:
        (attributions (*shape), output f(x), baseline output f(baseline), convergence delta
        sum(attributions) - (f(x) - f(baseline))).
    """
    x, baseline = x.detach().float(), baseline.detach().float()
    alphas = (torch.arange(steps, dtype=torch.float32, device=x.device) + 0.5) / steps  # (S,)
    total = torch.zeros_like(x)
    for start in range(0, steps, chunk):
        a = alphas[start : start + chunk].view(-1, *[1] * x.dim())  # (s, 1, ...)
        path = (baseline + a * (x - baseline)).requires_grad_(True)  # (s, *shape)
        (grad,) = torch.autograd.grad(forward(path).sum(), path)
        total += grad.sum(0)
    attributions = (x - baseline) * total / steps
    with torch.no_grad():
        ends = forward(torch.stack([x, baseline])).double()
    output, start_output = float(ends[0]), float(ends[1])
    return attributions, output, start_output, float(attributions.sum()) - (output - start_output)


def top(names: list[str], values: np.ndarray, k: int = TOP) -> list[dict]:
    """The k largest attributions by size, largest first."""
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    return [{"name": names[i], "attribution": float(values[i])} for i in order]


# ---- HTML ----------------------------------------------------------------------------------------

POSITIVE, NEGATIVE = (214, 39, 40), (31, 119, 180)  # red raises the explained number, blue lowers it


def highlighted_tokens(tokens: list[dict], text: str | None = None) -> str:
    """Tokens [{"token", "attribution"}] shaded by attribution (red up, blue down). With `text` and each
    token's `start`/`end` in it, the text itself is shown, its tokens' characters shaded; otherwise the
    tokens, WordPiece continuations (##ing) joined to the token before them."""
    scale = max((abs(t["attribution"]) for t in tokens), default=0.0) or 1.0

    def span(t: dict, shown: str) -> str:
        color = POSITIVE if t["attribution"] >= 0 else NEGATIVE
        alpha = min(1.0, abs(t["attribution"]) / scale) * 0.75
        return (
            f'<span class="tok" title="{t["attribution"]:+.4f}" '
            f'style="background:rgba({color[0]},{color[1]},{color[2]},{alpha:.2f})">{html.escape(shown)}</span>'
        )

    if text is not None and all("start" in t for t in tokens):
        parts, at = [], 0
        for t in sorted(tokens, key=lambda t: t["start"]):
            if t["start"] < at:  # overlapping offsets: keep what is drawn
                continue
            parts.append(html.escape(text[at : t["start"]]) + span(t, text[t["start"] : t["end"]]))
            at = t["end"]
        return f'<div class="text">{"".join(parts)}{html.escape(text[at:])}</div>'
    parts = []
    for t in tokens:
        joined = t["token"].startswith("##")
        parts.append(("" if joined or not parts else " ") + span(t, t["token"][2:] if joined else t["token"]))
    return f'<div class="text">{"".join(parts)}</div>'


def heatmap_png(image: np.ndarray, heat: np.ndarray, min_px: int = 128) -> str:
    """A data URL of the image (C, H, W) in [0, 1] beside it overlaid with the heat map (H, W): red where
    the pixels raise the explained number, blue where they lower it. Small images are scaled up."""
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float32)
    grey = pixels.mean(0) if pixels.ndim == 3 else pixels
    low, high = float(grey.min()), float(grey.max())
    grey = (grey - low) / max(high - low, 1e-8) if low < 0 or high > 1 else grey
    base = np.repeat(grey[..., None], 3, -1) * 0.6 + 0.2  # (H, W, 3), muted
    if pixels.ndim == 3 and pixels.shape[0] == 3:
        base = np.clip(pixels.transpose(1, 2, 0), 0, 1)
    scale = float(np.abs(heat).max()) or 1.0
    strength = np.abs(heat)[..., None] / scale  # (H, W, 1) in [0, 1]
    color = np.where(heat[..., None] >= 0, np.array(POSITIVE), np.array(NEGATIVE)) / 255.0
    overlay = base * (1 - 0.8 * strength) + color * 0.8 * strength
    both = np.concatenate([base, np.ones((grey.shape[0], max(1, grey.shape[1] // 16), 3)), overlay], 1)
    picture = Image.fromarray((np.clip(both, 0, 1) * 255).round().astype(np.uint8))
    factor = max(1, -(-min_px // grey.shape[0]))
    picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def contribution_bars(contributions: list[dict], k: int = TOP) -> str:
    """A bar per column ("column = value", largest first; the rest summed in one line), drawn in HTML so
    that the report, the page and `foundry explain` need no plot."""
    shown = [(f"{c['column']} = {_short(c['value'])}", c["contribution"]) for c in contributions[:k]]
    if len(contributions) > k:
        shown.append(
            (f"{len(contributions) - k} other columns", sum(c["contribution"] for c in contributions[k:]))
        )
    scale = max((abs(v) for _, v in shown), default=0.0) or 1.0
    rows = "".join(
        f'<div class="bar" title="{value:+.6g}">{html.escape(name[:60])} <b>{value:+.4g}</b>'
        f'<div style="height:8px;width:{max(abs(value) / scale * 100, 0.5):.1f}%;background:rgb'
        f'{POSITIVE if value >= 0 else NEGATIVE}"></div></div>'
        for name, value in shown
    )
    return f'<div class="bars">{rows}</div>'


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary(explanation: dict) -> str:
    """One line on what is explained: `probability of 'pos' 0.93, from 0.51 for [PAD] tokens; integrated
    gradients, 32 steps, convergence delta +1e-04`."""
    e = explanation
    delta = e.get("convergence_delta")
    return (
        f"{e['explains']} {e['output']:.4g}, from {e['baseline_output']:.4g} for {e['baseline']}; "
        f"{e['method']}"
        + (f", {e['steps']} steps, convergence delta {delta:+.1e}" if delta is not None else "")
    )


_PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 900px; color: #1f2933; }
section { border: 1px solid #e4e7eb; border-radius: 8px; padding: 12px 18px; margin: 14px 0; }
.muted { color: #7b8794; font-size: .9em; } .text { line-height: 1.9; white-space: pre-wrap; }
.tok { border-radius: 3px; padding: 1px 0; }
.bars { max-width: 480px; } .bar { margin: 2px 0; } img { max-width: 100%; image-rendering: pixelated; }
"""


def write_html(path: Path, title: str, names: list[str], explanations: list[dict], task) -> Path:
    """A self-contained page: per input its name, what is explained and the task's picture of it."""
    from modelfoundry.runfiles import atomic_write

    sections = "".join(
        f"<section><h2>{html.escape(name)}</h2><p>{html.escape(summary(e))}</p>"
        f"{task.explanation_html(e)}</section>"
        for name, e in zip(names, explanations)
    )
    legend = (
        '<p class="muted">Red raises the explained number, blue lowers it; the stronger the colour, the '
        "larger the contribution.</p>"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_PAGE_CSS}</style></head><body><h1>{html.escape(title)}</h1>{legend}{sections}</body></html>"
    )
    path = Path(path)
    atomic_write(path, page)
    return path
