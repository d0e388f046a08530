"""Conversions between the decoder's float tensors and the uint8 pictures users see (and back, for img2img)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError


def to_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """NCHW floats in ``value_range`` -> NHWC uint8, rounding as diffusers' ``numpy_to_pil`` does."""
    low, high = value_range
    unit = np.clip((images.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    return (unit.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def from_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """NHWC uint8 -> NCHW float32 in ``value_range`` (the encoder's input)."""
    low, high = value_range
    unit = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (unit * (high - low) + low).astype(np.float32)


def prepare_images(images: Any, channels: int, height: int, width: int) -> np.ndarray:
    """Any of: a PIL image, a list of them, a uint8 HxW / HxWxC / NxHxWxC array -> NHWC uint8 at model size."""
    from PIL import Image

    if isinstance(images, Image.Image):
        items: Sequence[Any] = [images]
    elif isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise InputError(f"image arrays must be uint8, got {images.dtype}")
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4) and images.shape[0] > 4):
            items = [images]
        elif images.ndim in (3, 4):
            items = list(images)
        else:
            raise InputError(f"image array must be HxW, HxWxC or NxHxWxC, got shape {list(images.shape)}")
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        raise InputError(f"images must be PIL images or uint8 arrays, got {type(images).__name__}")
    if len(items) == 0:
        raise InputError("no images given")
    mode = "L" if channels == 1 else "RGB"
    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim not in (2, 3):
                raise InputError(
                    f"image {i}: expected a uint8 HxW or HxWxC array, got {item.dtype} {list(item.shape)}"
                )
            item = Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item)
        elif not isinstance(item, Image.Image):
            raise InputError(f"image {i}: expected a PIL image or uint8 array, got {type(item).__name__}")
        if item.mode in ("RGBA", "LA"):  # composite on black, the digits' background
            background = Image.new("RGBA", item.size, (0, 0, 0, 255))
            item = Image.alpha_composite(background, item.convert("RGBA"))
        item = item.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(item, dtype=np.uint8)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out)


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """NHWC uint8 -> one HxWxC uint8 grid, ``nrow`` images per row (default: as square as possible)."""
    n, h, w, c = images.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / ncol)
    grid = np.zeros((rows * (h + padding) + padding, ncol * (w + padding) + padding, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = img
    return grid


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an HxWxC (C=1 or 3) uint8 array as PNG, creating the parent folder."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    return path
