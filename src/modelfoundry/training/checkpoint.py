"""Checkpoints written atomically, so a run killed at any moment leaves the last good one intact.

The state is serialised on the training thread between epochs (a few ms, while the compute
threads are idle), then a background thread writes the bytes with `runfiles.atomic_write`
(a temporary file beside the target, flushed to disk, renamed over the target), so training
does not wait for the disk. Pickling on the background thread instead would compete
with the next epoch's OpenMP threads for the cores, which stalls them far more than it costs.
Loading uses `weights_only=True`: no arbitrary objects are unpickled.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import torch

from modelfoundry.runfiles import atomic_write


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointWriter:
    """Writes one checkpoint at a time in the background; `save` waits for the previous write."""

    def __init__(self, path: Path):
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict) -> None:
        """Serialise `state` now (later changes to its tensors do not reach the file) and write it."""
        self.wait()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self._thread = threading.Thread(target=self._write, args=(buffer.getbuffer(),), daemon=False)
        self._thread.start()

    def _write(self, data: memoryview) -> None:
        try:
            atomic_write(self.path, data)
        except BaseException as exc:  # noqa: BLE001  surfaced on the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
