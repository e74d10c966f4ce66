"""The files of runs: where they live, what each file of a run folder is called, and the one way
they are written, so that a run killed at any moment leaves every file whole (old or new).

    $FOUNDRY_HOME (default ./runs)     registry.db, tune.db, calibration.json, tune/, feedback/
      .scratch/                        streamed data encoded for training, deleted with its splits
      <run-id>/                        one run (a compressed variant is a run too: <run-id>-int8/)
        config.yaml                    the resolved config
        data_report.json               what was found in the data
        metrics.json, report.html      validation and test results
        heldout.safetensors            test (else validation) inputs and targets: export parity checks
        calibration.safetensors        a sample of training inputs: int8 calibration
        checkpoints/, tensorboard/, evaluations/
        model/                         the package `load()` reads: model.json + model.safetensors

Nothing heavy is imported here: the CLI and `plan` use these paths without torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from modelfoundry.errors import UserError

CONFIG = "config.yaml"
DATA_REPORT = "data_report.json"
METRICS = "metrics.json"
REPORT = "report.html"
HELDOUT = "heldout.safetensors"
CALIBRATION = "calibration.safetensors"
CHECKPOINTS = "checkpoints"
PACKAGE = "model"
WEIGHTS = ("model.safetensors", "model.onnx")  # an int8 variant has only the ONNX graph
TEMPORARY = ".*.tmp"  # every file or folder being written; what is left of them after a kill is garbage


def runs_root() -> Path:
    """Where run folders go: $FOUNDRY_HOME, else ./runs."""
    return Path(os.environ.get("FOUNDRY_HOME", "runs"))


def scratch_root() -> Path:
    """Where streamed data is encoded: a real disk beside the runs, not /tmp, which may be memory."""
    return runs_root() / ".scratch"


def package_folder(path: str | Path) -> Path:
    """Accept a run folder or its `model/` folder."""
    path = Path(path)
    for candidate in (path, path / PACKAGE):
        if (candidate / "model.json").is_file() and any((candidate / f).is_file() for f in WEIGHTS):
            return candidate
    raise UserError(
        f"{path}: no model package here (expected model/model.json and model/model.safetensors). "
        "Is the run finished? `foundry runs list` shows runs and their status."
    )


def run_folder(package: Path) -> Path:
    """The run a package belongs to: `runs/<id>/` for `runs/<id>/model/`, else the package itself."""
    return package.parent if package.name == PACKAGE else package


# ---- samples of encoded inputs ------------------------------------------------------------------


def save_sample(run: Path, name: str, data, limit: int = 256) -> None:
    """Keep up to `limit` encoded inputs (N, ...) and their targets (N,) of `data` (a split with
    `batches`, or None: nothing is written) in `run / name`: HELDOUT or CALIBRATION."""
    from safetensors.torch import save

    if data is None:
        return
    inputs, targets = next(data.batches(limit))
    tensors = {"inputs": inputs.detach().cpu().contiguous(), "targets": targets.detach().cpu().contiguous()}
    atomic_write(run / name, save(tensors))


def load_sample(run: Path, name: str) -> dict | None:
    """{"inputs": (N, ...), "targets": (N,)} saved by `save_sample`, or None when the run has none."""
    from safetensors.torch import load_file

    path = run / name
    return load_file(str(path)) if path.is_file() else None


# ---- atomic writes ------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write a file to; when the block ends without an
    error, that file replaces `path`, else it is removed and `path` stays as it was.

    The file is flushed to disk before the rename and the rename itself after it, so even a power
    cut leaves the old file or the new one, never an empty or torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique, so two processes writing the same file never write into one temporary file
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def atomic_write(path: Path, data: str | bytes | memoryview) -> None:
    """Write text (UTF-8) or bytes to `path` so that a reader, or a kill, sees the old file or the new one."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def atomic_write_json(path: Path, obj) -> None:
    """`atomic_write` of indented JSON; numpy numbers and arrays become JSON numbers and lists."""
    atomic_write(path, json.dumps(obj, indent=2, default=_json_default))


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder beside `folder` for the block to fill; when the block ends without an error it
    replaces `folder` (its files flushed to disk first), else it is removed and `folder` stays.

    A folder cannot be swapped in one rename: the old one moves aside to `.<name>.old` first, so a
    kill between the two renames leaves no `folder` (the old one is in `.<name>.old`).
    """
    folder = Path(folder)
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for dirpath, _, filenames in os.walk(tmp):
            for name in filenames:
                _fsync(Path(dirpath) / name)
            _fsync(Path(dirpath))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    _fsync(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(folder: Path) -> None:
    """Delete the temporary files and folders that runs killed while writing left in `folder`; the real
    files beside them are intact."""
    for leftover in list(folder.rglob(TEMPORARY)):  # listed first: removing while walking skips some
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # a file system that cannot sync folders
            raise
    finally:
        os.close(fd)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
