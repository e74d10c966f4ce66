"""Image folders larger than memory (data.streaming): files are checked and hashed once, then decoded
batch by batch in worker processes, so only the batches in flight are ever held decoded.

The scan opens each file once: Pillow's `verify` for corrupt files (skipped with a warning, as when
reading whole), its header for size and mode, and a hash of its bytes for duplicates and leakage.
The split, the labels and the batch order are those of the in-memory path, so a lazy run trains on
the same batches as one that reads the folder whole.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modelfoundry.data.images import common_shape, image_files, read_image, to_array

WORKERS = min(2, os.cpu_count() or 1)  # decoding processes per loader


def decoded_bytes(root: Path, channels: int | None, size: int | None) -> int:
    """About how much memory reading the folder whole takes (float32), from the file count and one header."""
    files, _ = image_files(root)
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = (size, size) if size else image.size
                bands = channels or len(image.getbands())
            return len(files) * width * height * bands * 4
        except (UnidentifiedImageError, OSError, ValueError):
            continue
    return 0


def scan(root: Path, size: int | None, channels: int | None):
    """Returns paths, labels, content hashes, (C, H, W) and the skipped files with reasons."""
    files, labels = image_files(root)
    kept, kept_labels, hashes, sizes, modes, skipped = [], [], [], Counter(), {}, []
    for path, label in zip(files, labels):
        try:
            raw = path.read_bytes()
            with Image.open(path) as image:
                image.verify()  # checks the file without decoding the pixels
            with Image.open(path) as image:
                sizes[image.size] += 1
                modes[path] = image.mode
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            skipped.append(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})")
            continue
        kept.append(path)
        kept_labels.append(label)
        hashes.append(hashlib.blake2b(raw, digest_size=8).hexdigest())
    shape = common_shape(root, sizes, modes, skipped, size, channels)
    return kept, np.array(kept_labels), np.array(hashes), shape, skipped


class _Decode(torch.utils.data.Dataset):
    """Index -> (C, H, W) float32 tensor; runs in the loader's worker processes."""

    def __init__(self, paths: list[Path], shape: tuple[int, int, int]):
        self.paths, self.shape = paths, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(to_array(read_image(self.paths[i]), self.shape[1:], self.shape[0]))


class LazyImages:
    """The ArrayData interface (len, targets, batches, to) over image files decoded per batch."""

    def __init__(
        self,
        paths: list[Path],
        targets: np.ndarray | torch.Tensor,
        shape: tuple[int, int, int],
        device: torch.device | None = None,
    ):
        self.paths, self.shape = paths, shape
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.device = device or torch.device("cpu")

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device: torch.device) -> LazyImages:
        return LazyImages(self.paths, self.targets, self.shape, device)

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        # the same draw as ArrayData.batches, so both paths see the same batches
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        chunks = [order[start : start + batch_size].tolist() for start in range(0, len(self), batch_size)]
        loader = torch.utils.data.DataLoader(
            _Decode(self.paths, self.shape),
            batch_sampler=chunks,
            num_workers=WORKERS if len(chunks) > 1 else 0,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0),
        )  # its own: drawing worker seeds from the global one would shift dropout
        for chunk, inputs in zip(chunks, loader):
            yield inputs.to(self.device, non_blocking=True), self.targets[chunk].to(self.device)


class LazyDisplay:
    """The test images for the report, decoded only when shown."""

    def __init__(self, paths: list[Path], shape: tuple[int, int, int]):
        self.paths, self.shape = paths, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return to_array(read_image(self.paths[i]), self.shape[1:], self.shape[0])

    def take(self, indices) -> list[np.ndarray]:
        return [self[i] for i in indices]
