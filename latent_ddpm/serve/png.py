"""Images on the wire: PNG (lossless, so a served image equals the runtime's array bit for bit) in base64."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def encode_png(image: np.ndarray) -> bytes:
    """HxWxC (C = 1 or 3) uint8 -> PNG bytes (grey or RGB)."""
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> HxWxC uint8, with C = 1 for grey images as the runtime returns them."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("L" if img.mode in ("1", "L", "I;16", "I") else "RGB"), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def to_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def from_b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
