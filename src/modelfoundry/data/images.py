"""Images: reading folders of PNG/JPEG files, the one image transform shared by training and
prediction, and training-time augmentation done with tensor ops (torchvision does not load here).
"""

from __future__ import annotations

import gzip
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from modelfoundry.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GREY_MODES = {"L", "1", "LA", "I", "I;16"}


def to_array(image: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image -> float32 array (C, H, W) in [0, 1]; the transform training and prediction share."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit grey: convert("L") would clip every value above 255 to white; rescale instead.
        wide = np.asarray(image, dtype=np.float32) / 65535.0 * 255.0
        image = Image.fromarray(wide.clip(0, 255).astype(np.uint8))
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:  # convert() to the same mode copies for nothing (a served request's cost)
        image = image.convert(mode)
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image; raises UserError naming the file when it cannot."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def image_files(root: Path) -> tuple[list[Path], list[str]]:
    """`root/<class>/...` files (any depth, hidden ones left out) and their class names, sorted."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(
            f"{root}: an image folder needs one sub-folder per class (e.g. {root}/cat/1.png); found none."
        )
    files, labels = [], []
    for class_dir in class_dirs:
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            files.append(path)
            labels.append(class_dir.name)
    return files, labels


def common_shape(
    root: Path,
    sizes: Counter,
    modes: dict[Path, str],
    skipped: list[str],
    size: int | tuple[int, int] | None,
    channels: int | None,
) -> tuple[int, int, int]:
    """(C, H, W) every image of a folder is brought to: the asked size, else the most common one; the
    channels asked, else those of most images (`modes`: each file's Pillow mode). Warns about the
    skipped files and the converted ones; a folder with no readable image is an error."""
    for reason in skipped:
        warnings.warn(f"skipped {reason}", stacklevel=3)
    if not sizes:
        raise UserError(
            f"{root}: no readable images in the class folders ({len(skipped)} files skipped). "
            f"Supported formats: {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    if channels is None:
        channels = majority_channels(root, modes)
    if size is None:
        width, height = sizes.most_common(1)[0][0]
    else:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
    return channels, height, width


def majority_channels(root: Path, modes: dict[Path, str]) -> int:
    """1 (grey) or 3 (colour), as most images are (a tie keeps colour); the others are converted, with a
    warning naming them, so one RGBA file among grey ones does not make the whole model colour."""
    grey = [path for path, mode in modes.items() if mode in GREY_MODES]
    colour = [path for path, mode in modes.items() if mode not in GREY_MODES]
    channels = 3 if len(colour) >= len(grey) else 1
    converted = colour if channels == 1 else grey
    if converted:
        names = ", ".join(str(Path(p).relative_to(root)) for p in converted[:10])
        more = f" and {len(converted) - 10} more" if len(converted) > 10 else ""
        kind, other = ("grey", "colour") if channels == 1 else ("colour", "grey")
        warnings.warn(
            f"{root}: most images are {kind}, so the model takes {kind} images; {len(converted)} {other} "
            f"image(s) are converted to {kind}: {names}{more}. Set data.channels: "
            f"{3 if channels == 1 else 1} to take every image as {other} instead.",
            stacklevel=4,
        )
    return channels


def read_image_folder(root: Path, size: int | tuple[int, int] | None, channels: int | None):
    """Read `root/<class>/<image>` files.

    Returns:
        images (N, C, H, W) float32 in [0, 1], labels (N,) str, relative paths, skipped files with reasons.
    """
    files, classes = image_files(root)
    opened, labels, paths, modes, skipped = [], [], [], {}, []
    for path, label in zip(files, classes):
        try:
            opened.append(read_image(path))
        except UserError as exc:
            skipped.append(str(exc))
            continue
        labels.append(label)
        paths.append(str(path.relative_to(root)))
        modes[path] = opened[-1].mode
    shape = common_shape(root, Counter(im.size for im in opened), modes, skipped, size, channels)
    images = np.stack([to_array(im, shape[1:], shape[0]) for im in opened])
    return images, np.array(labels), paths, skipped


def read_idx_folder(root: Path):
    """Read an MNIST-style folder of IDX files (`*idx3-ubyte[.gz]` images, `*idx1-ubyte[.gz]` labels)."""

    def find(pattern: str) -> Path:
        found = sorted(root.glob(f"*{pattern}*"))
        if len(found) != 1:
            raise UserError(f"{root}: expected exactly one *{pattern}* file, found {len(found)}")
        return found[0]

    def read(path: Path) -> bytes:
        return gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()

    raw_images, raw_labels = read(find("idx3-ubyte")), read(find("idx1-ubyte"))
    n, rows, cols = (int.from_bytes(raw_images[i : i + 4], "big") for i in (4, 8, 12))
    if len(raw_images) != 16 + n * rows * cols:
        raise UserError(
            f"{find('idx3-ubyte')}: header says {n} images of {rows}x{cols} "
            f"({16 + n * rows * cols} bytes) but the file has {len(raw_images)} bytes; it is truncated "
            "or not an IDX image file."
        )
    images = (
        np.frombuffer(raw_images, np.uint8, offset=16).reshape(n, 1, rows, cols).astype(np.float32) / 255.0
    )
    labels = np.frombuffer(raw_labels, np.uint8, offset=8)
    if len(labels) != n:
        raise UserError(f"{root}: {n} images but {len(labels)} labels in the IDX files")
    return images, labels.astype(str), [f"#{i}" for i in range(n)]


def augment(
    batch: torch.Tensor, generator: torch.Generator, *, crop_padding: int, flip: bool, rotation: float
) -> torch.Tensor:
    """Random crop / flip / rotation of a batch (B, C, H, W), one affine resample for all three."""
    b = batch.shape[0]
    if flip:
        flipped = (torch.rand(b, generator=generator) < 0.5).to(
            batch.device
        )  # draws stay on the CPU generator
        batch = torch.where(flipped[:, None, None, None], batch.flip(-1), batch)
    if not crop_padding and not rotation:
        return batch
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(rotation)
    h, w = batch.shape[-2:]
    # A crop of a zero-padded image is a translation by up to `crop_padding` pixels ((-1, 1) spans w pixels).
    shift = torch.randint(
        -crop_padding, crop_padding + 1, (b, 2), generator=generator
    ).float() * torch.tensor([2.0 / w, 2.0 / h])
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(batch.dtype), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid.to(batch.device), padding_mode="zeros", align_corners=False)
