"""Request inputs -> what the model takes, and what feedback would keep of each input.

`encode_inputs(served, inputs, settings, field)` is the one entry point for JSON inputs (texts,
base64 images, table rows); `encode_images` takes uploaded files. Every check names the input at
fault (`inputs.2`, `inputs.0.color`) in an ApiError, so a client knows what to fix. This module knows
nothing of routes: it runs on the event loop or in the thread pool, as the caller decides.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from modelfoundry.errors import UserError, did_you_mean
from modelfoundry.serve.errors import ApiError

if TYPE_CHECKING:
    from modelfoundry.serve.service import Served, Settings


def encode_inputs(served: Served, inputs: list, settings: Settings, field: str = "inputs"):
    """Raw JSON inputs -> (model payload, what feedback stores per input).

    Raises ApiError naming the input.
    """
    kind = served.predictor.spec["preprocessing"]["kind"]
    if kind == "image":
        contents = []
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                raise ApiError(
                    422,
                    _at(field, i, inputs),
                    f"an image model takes base64 strings (or data URLs); got {_json_type(item)}.",
                )
            contents.append(_base64(item, _at(field, i, inputs)))
        return encode_images(served, contents, settings, field, single=len(inputs) == 1 and field == "input")
    if kind == "text":
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                raise ApiError(
                    422, _at(field, i, inputs), f"a text model takes strings; got {_json_type(item)}."
                )
            if not item.strip():
                raise ApiError(422, _at(field, i, inputs), "the text is empty.")
        texts = list(inputs)
        if served.predictor.spec["preprocessing"].get("pii", "off") != "off":
            from modelfoundry.data.privacy import scrub_texts

            stored, _, _ = scrub_texts(texts, "redact")  # feedback never keeps the personal data it was sent
        else:
            stored = texts
        return served.predictor.encode(texts), [{"text": t} for t in stored]
    return _encode_rows(served, inputs, field)


def _encode_rows(served: Served, rows: list, field: str):
    columns = served.predictor.spec["preprocessing"]["columns"]
    names = [c["name"] for c in columns]
    for i, row in enumerate(rows):
        where = _at(field, i, rows)
        if not isinstance(row, dict):
            raise ApiError(
                422, where, f"a table model takes objects of column -> value; got {_json_type(row)}."
            )
        missing, extra = [n for n in names if n not in row], [k for k in row if k not in names]
        if missing:
            raise ApiError(
                422,
                where,
                f"missing column(s) {', '.join(map(repr, missing))}. The model needs: {', '.join(names)}.",
            )
        if extra:
            raise ApiError(
                422,
                where,
                f"unknown column(s) {', '.join(map(repr, extra))}.{did_you_mean(extra[0], missing or names)}"
                f" The model takes: {', '.join(names)}.",
            )
        for column in columns:
            value = row[column["name"]]
            if (
                column["kind"] == "number"
                and value is not None
                and (isinstance(value, bool) or not isinstance(value, (int, float)))
            ):
                raise ApiError(
                    422,
                    f"{where}.{column['name']}",
                    f"{value!r} is not a number; this column takes numbers (or null for a missing value).",
                )
            if isinstance(value, (dict, list)):
                raise ApiError(
                    422, f"{where}.{column['name']}", f"got {_json_type(value)}; give a string or number."
                )
    from modelfoundry.data.tabular import TableEncoder

    frame = pd.DataFrame([{n: row[n] for n in names} for row in rows], columns=names)
    features = TableEncoder(served.predictor.spec["preprocessing"]).transform(frame, field)
    return torch.from_numpy(features), [{"row": {n: row[n] for n in names}} for row in rows]


def encode_images(
    served: Served, contents: list[bytes], settings: Settings, field: str, single: bool = False
):
    arrays, stored = [], []
    for i, data in enumerate(contents):
        where = field if single else f"{field}.{i}"
        image = decode_image(data, where, settings.max_image_pixels)
        try:
            arrays.append(served.predictor._image(image))
        except UserError as exc:
            raise ApiError(422, where, str(exc)) from None
        stored.append({"image_bytes": data})
    return torch.from_numpy(np.stack(arrays)), stored


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode an image; its declared size is checked before any pixel is decoded (decompression bombs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ApiError(
                    413,
                    field,
                    f"the image is {width}x{height} pixels; the limit is {max_pixels:,} pixels. "
                    "Send a smaller image.",
                )
            image.load()
            return image
    except ApiError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        reason = (
            "not an image Pillow can read (PNG, JPEG, GIF, BMP, WebP, TIFF)"
            if isinstance(exc, UnidentifiedImageError)
            else f"a damaged or unreadable image ({type(exc).__name__})"
        )
        raise ApiError(422, field, f"{reason}.") from None


def _base64(item: str, field: str) -> bytes:
    if item.startswith("data:"):
        item = item.partition(",")[2]
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            422, field, "not valid base64; send the image file's bytes base64-encoded (or a data URL)."
        ) from None


def _at(field: str, i: int, inputs: list) -> str:
    return field if field == "input" else f"{field}.{i}"


def _json_type(value) -> str:
    return {
        str: "a string",
        dict: "an object",
        list: "a list",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
