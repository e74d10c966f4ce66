"""End-to-end test helpers: run the real `foundry` CLI in a subprocess, check its messages, and write
tiny data sets (8x8 PNG folders, CSVs) and configs. Fixtures live in conftest.py.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import yaml
from PIL import Image

CLI_TIMEOUT_S = 240
TABLE_LABELS = ("a", "b", "c")
IMAGE_LABELS = ("cat", "dog")
# Tiny and fast: one hidden layer of 8 units, 1-2 epochs; fp32 so runs on any CPU give the same numbers.
TINY_MLP = ["--set", "model.hidden=[8]", "--set", "train.epochs=2", "--set", "train.precision=fp32"]


def foundry(*args: str | Path, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    """Run `python -m modelfoundry ARGS` in `cwd` with runs and the registry under `home`."""
    return subprocess.run(
        [sys.executable, "-m", "modelfoundry", *map(str, args)],
        check=False,  # callers assert on the exit code and the message
        cwd=cwd,
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FOUNDRY_DB", "FORCE_COLOR", "COLUMNS")}
    # One thread per process: the suite runs two pytest workers on two shared cores, and torch's
    # default of one thread per core makes tiny models ~10x slower when processes compete.
    env.update(FOUNDRY_HOME=str(home), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def one_line(text: str) -> str:
    """Undo rich's line wrapping so a message can be searched for phrases."""
    return " ".join(text.split())


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr


def assert_user_error(result: subprocess.CompletedProcess, *phrases: str) -> str:
    """Exit status 2, one `error:` message, no traceback, and every phrase in the message."""
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, shown
    assert result.returncode == 2, shown
    message = one_line(result.stderr)
    assert message.count("error:") == 1, shown
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} is not in the message\n{shown}"
    return message


# ----------------------------------------------------------------------------------------- data


def write_image_folder(
    root: Path, per_class: int = 12, classes=IMAGE_LABELS, size: int = 8, seed: int = 0
) -> Path:
    """`root/<class>/<i>.png`: 8x8 grey images, bright for the first class and darker for each next one."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_png(root / name / f"{i}.png", 200 - 120 * k / max(1, len(classes) - 1), rng, size)
    return root


def write_png(path: Path, brightness: float, rng: np.random.Generator, size: int = 8) -> Path:
    pixels = np.clip(rng.normal(brightness, 25, (size, size)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)  # (H, W) uint8 -> grey
    return path


def table_frame(per_class: int = 20, labels=TABLE_LABELS, seed: int = 0) -> pd.DataFrame:
    """Two numeric features that separate the classes, one categorical feature, and `label`."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, label in enumerate(labels):
        for _ in range(per_class):
            rows.append(
                {
                    "x1": round(float(rng.normal(3 * k, 1)), 3),
                    "x2": round(float(rng.normal(-k, 1)), 3),
                    "color": ["red", "green", "blue"][int(rng.integers(3))],
                    "label": label,
                }
            )
    return pd.DataFrame(rows).sample(frac=1, random_state=seed).reset_index(drop=True)


def write_table(path: Path, frame: pd.DataFrame | None = None) -> Path:
    (table_frame() if frame is None else frame).to_csv(path, index=False)
    return path


def write_config(path: Path, task: str, source: str | Path, **sections) -> Path:
    """A YAML config; `sections` are merged into `data`, `model` and `train` (e.g. data={"label": "y"})."""
    config = {"task": task, "data": {"source": str(source)}, "model": {}, "train": {"epochs": 1}}
    if task == "image_classification":
        config["model"] = {"name": "cnn", "width": 4}
    else:
        config["data"]["label"] = "label"
        config["model"] = {"name": "mlp", "hidden": [8]}
    for section, values in sections.items():
        config.setdefault(section, {})
        if isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_sentences(path: Path) -> Path:
    """About 6 KB of plain, repetitive English sentences, one per line: a tiny GPT learns its letters in a
    few dozen steps."""
    subjects = ["the cat", "a dog", "the bird", "my friend", "the old man", "a child"]
    verbs = ["sees", "likes", "finds", "calls", "follows", "watches"]
    objects = ["the sun", "a red ball", "the river", "a green tree", "the moon", "an open door"]
    lines = [f"{s} {v} {o}." for i, s in enumerate(subjects) for v in verbs for o in objects[i % 3 :]]
    path.write_text("\n".join(lines * 2) + "\n")
    return path


def tiny_gpt_config(source: str, context: int = 128) -> dict:
    """A 1-layer, 32-wide character GPT trained for 40 steps: seconds on a CPU."""
    return {
        "task": "text_generation",
        "data": {"source": source, "tokenizer": {"type": "char"}},
        "model": {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": context},
        "train": {"max_steps": 40, "precision": "fp32", "batch_size": 16},
    }


# ---------------------------------------------------------------------------------------- serve


class Server:
    """`foundry serve MODEL --port 0 ...` in a subprocess; `url` is where it listens once started."""

    def __init__(self, model: str | Path, *args: str, cwd: Path, home: Path, startup_timeout: float = 120):
        import re
        import selectors
        import time

        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelfoundry", "serve", str(model), "--port", "0", *args],
            cwd=cwd,
            env=cli_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline, seen = time.monotonic() + startup_timeout, ""
        while time.monotonic() < deadline:
            if selector.select(timeout=1):
                # os.read, not readline: several lines may come in one write, and select() does not see
                # what a buffered reader already holds
                chunk = os.read(self.process.stdout.fileno(), 65_536).decode()
                seen += chunk
                if found := re.search(r"on (http://[\d.]+:\d+)", seen):
                    self.url, self.banner = found.group(1), seen  # banner: what it printed at start
                    return
                if not chunk and self.process.poll() is not None:
                    break
        self.stop()
        raise AssertionError(
            f"foundry serve did not start\nstdout:\n{seen}\nstderr:\n{self.process.stderr.read()}"
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as when a machine loses power."""
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> str:
        """Stop and return what the server wrote to stderr."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.stderr.read() if self.process.stderr else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def png_bytes(value: int = 200, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
