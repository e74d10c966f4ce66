"""Shared by the bench scripts: the machine a result came from, and one section of RESULTS.md per script."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\nWritten by the scripts in this folder with `--write`; each replaces its own "
    "section.\n"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(extra: dict[str, str] | None = None) -> str:
    """One line: CPU, cores, torch threads, versions (plus `extra` versions, e.g. lightning)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [
        f"CPU {cpu_model()}",
        f"{cores} cores",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"Python {platform.python_version()}",
    ]
    parts += [f"{name} {version}" for name, version in (extra or {}).items()]
    return ", ".join(parts)


def command() -> str:
    return "python " + shlex.join(sys.argv)


def write_section(title: str, body: str, extra: dict[str, str] | None = None) -> Path:
    """Replace the section `## title` of RESULTS.md (or append it) with date, machine, command and `body`."""
    section = (
        f"## {title}\n\n{datetime.now():%Y-%m-%d %H:%M} · {machine(extra)}\n\n"
        f"Command: `{command()}`\n\n{body.rstrip()}\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == f"## {title}"), None)
    if start is None:
        text = text.rstrip() + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    RESULTS.write_text(text)
    return RESULTS
