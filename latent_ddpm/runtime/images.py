"""Conversions between the decoder's float tensors and the uint8 pictures users see (and back, for img2img)."""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.files import OutputError, atomic_write


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


# A 3-D array is one image, so its last axis must be a channel count; a batch needs the explicit N axis.
CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA (composited on black)


def prepare_images(
    images: Any, channels: int, height: int, width: int, max_images: int | None = None
) -> np.ndarray:
    """Any of: a PIL image, a list of them, a uint8 HxW / HxWxC / NxHxWxC array -> NHWC uint8 at model size.

    Shapes are never guessed: HxW and HxWxC (C in 1, 3, 4) are one image, NxHxWxC is a batch, anything else is
    refused (an HxWx2 array used to become H grey images, and a 4x4x3 array four 4x3 ones). ``max_images``
    bounds the batch before any image is converted.
    """
    from PIL import Image

    if isinstance(images, Image.Image):
        items: Sequence[Any] = [images]
    elif isinstance(images, np.ndarray):
        _check_array(images, "image array", batch_ok=True)
        items = list(images) if images.ndim == 4 else [images]
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        raise InputError(f"images must be PIL images or uint8 arrays, got {type(images).__name__}")
    if len(items) == 0:
        raise InputError("no images given")
    if max_images is not None and len(items) > max_images:
        raise InputError(
            f"{len(items)} images is more than the limit of {max_images} per call; raise it with "
            "Pipeline(max_images=...) if you have the memory, or make several calls"
        )
    mode = "L" if channels == 1 else "RGB"
    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            _check_array(item, f"image {i}", batch_ok=False)
            item = Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item)
        elif not isinstance(item, Image.Image):
            raise InputError(f"image {i}: expected a PIL image or uint8 array, got {type(item).__name__}")
        if 0 in item.size:
            raise InputError(f"image {i} is {item.size[0]}x{item.size[1]} pixels: nothing to encode")
        if item.mode in ("RGBA", "LA"):  # composite on black, the digits' background
            background = Image.new("RGBA", item.size, (0, 0, 0, 255))
            item = Image.alpha_composite(background, item.convert("RGBA"))
        item = item.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(item, dtype=np.uint8)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out)


def _check_array(array: np.ndarray, what: str, batch_ok: bool) -> None:
    """uint8, HxW or HxWxC with a known channel count (or NxHxWxC when ``batch_ok``), no empty axis."""
    shapes = "HxW, HxWxC" + (" or NxHxWxC" if batch_ok else "") + f" with C in {CHANNEL_COUNTS}"
    if array.dtype != np.uint8:
        raise InputError(f"{what}: expected uint8 pixels, got {array.dtype}")
    ok_rank = array.ndim in ((2, 3, 4) if batch_ok else (2, 3))
    if not ok_rank or (array.ndim >= 3 and array.shape[-1] not in CHANNEL_COUNTS):
        raise InputError(
            f"{what} has shape {list(array.shape)}: expected {shapes} (a batch of grey images is NxHxWx1)"
        )
    if 0 in (array.shape[1:] if array.ndim == 4 else array.shape):
        raise InputError(f"{what} has shape {list(array.shape)}: an image needs at least one pixel")


def grid_size(n: int, h: int, w: int, nrow: int | None = None, padding: int = 2) -> tuple[int, int]:
    """(height, width) of ``make_grid``'s grid of ``n`` images of ``h``x``w`` pixels."""
    ncol = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / ncol)
    return rows * (h + padding) + padding, ncol * (w + padding) + padding


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """NHWC uint8 -> one HxWxC uint8 grid, ``nrow`` images per row (default: as square as possible)."""
    n, h, w, c = images.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    grid = np.zeros((*grid_size(n, h, w, ncol, padding), c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = img
    return grid


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """HxWxC uint8 -> (H*scale)x(W*scale)xC by repeating pixels (nearest neighbour): every model pixel stays a
    sharp square, where viewers and browsers blur a small image they enlarge."""
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def save_png(image: np.ndarray, path: str | Path, text: dict[str, str] | None = None) -> Path:
    """Write an HxWxC (C=1 or 3) uint8 array as PNG, creating the parent folder; ``text``: tEXt chunks.

    Written whole or not at all (files.atomic_write): a full disk or a vanished folder leaves no half PNG
    and is one line naming the file (OutputError), not a traceback."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG", pnginfo=info)
    path = Path(path)
    try:
        return atomic_write(path, buffer.getvalue())
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


# Pictures larger than this are refused from their header, before a byte of pixels is decoded: 4096x4096 takes
# any phone photo (12 MP) and is 64 MB as RGBA; a 13000x13000 PNG of a few hundred kB would decode to 676 MB.
MAX_INPUT_PIXELS = 4096 * 4096
# Decoded pictures are shrunk to fit this square at once (JPEGs decode at reduced size directly): they are
# resized to the model's 32 to 256 pixels anyway.
WORKING_SIDE = 1024


def open_picture(path: str | Path, what: str, reader: str) -> np.ndarray:
    """A picture file as an HxW / HxWx3 / HxWx4 uint8 array, at most WORKING_SIDE pixels a side.

    Pillow's ``Image.open`` reads only the header, so the pixel count is checked before anything is decoded.
    ``what`` names the file and ``reader`` the program in the messages ("the uploaded file", "the demo").
    """
    from PIL import Image, ImageOps

    picture: Image.Image
    try:
        with warnings.catch_warnings():  # Pillow warns below its own limit; ours, lower, is enforced next
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(path)
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(int(pixels.group(1)) if pixels else MAX_INPUT_PIXELS + 1, reader) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} is not an image Pillow can read ({exc})") from None
    with picture:
        width, height = picture.size
        if width * height > MAX_INPUT_PIXELS:
            raise _too_large(width * height, reader)
        if width == 0 or height == 0:
            raise InputError(f"the image is {width}x{height} pixels: nothing to draw from")
        picture.thumbnail((WORKING_SIDE, WORKING_SIDE))  # decodes (a JPEG at a reduced scale) and shrinks
        picture = ImageOps.exif_transpose(picture)
        if picture.mode not in ("L", "RGB", "RGBA"):
            picture = picture.convert(
                "RGBA" if "A" in picture.getbands() or "transparency" in picture.info else "RGB"
            )
        return np.asarray(picture)


def _too_large(pixels: int, reader: str) -> InputError:
    return InputError(
        f"the image has {pixels / 1e6:.1f} megapixels; {reader} takes at most {MAX_INPUT_PIXELS / 1e6:.1f} "
        "(scale it down first)"
    )
