"""Checkpoints written atomically, so a run killed at any moment leaves the last good one intact.

The state is written to a temporary file beside the target, flushed to disk, then renamed over
it (rename is atomic on POSIX). Writes happen on a background thread from a snapshot of the
tensors, so training does not wait for the disk. Loading uses `weights_only=True`: no arbitrary
objects are unpickled.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch


def snapshot(state):
    """A deep copy of tensors (moved to CPU) inside nested dicts / lists, safe to write later."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(v) for v in state)
    return state


def atomic_save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointWriter:
    """Writes one checkpoint at a time in the background; `save` waits for the previous write."""

    def __init__(self, path: Path):
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict) -> None:
        self.wait()
        data = snapshot(state)
        self._thread = threading.Thread(target=self._write, args=(data,), daemon=False)
        self._thread.start()

    def _write(self, data: dict) -> None:
        try:
            atomic_save(data, self.path)
        except BaseException as exc:  # surfaced on the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
