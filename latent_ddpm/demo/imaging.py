"""Picture helpers for the demo: crisp upscaling for display, strips and GIFs, sketch clean-up.

Model outputs are tiny (32x32 digits); browsers blur small images when they scale them up, so the demo
enlarges them itself with nearest-neighbour, which keeps every model pixel a sharp square.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from latent_ddpm.runtime.images import open_picture as _open_picture
from latent_ddpm.runtime.images import upscale

# Display images at least this many pixels high.
DISPLAY_MIN_SIZE = 128


def display_scale(height: int) -> int:
    """The integer nearest-neighbour factor that makes an image of ``height`` pixels comfortably visible."""
    return max(1, -(-DISPLAY_MIN_SIZE // height))


def for_display(image: np.ndarray) -> np.ndarray:
    """HxWxC uint8 model output -> an upscaled HxW (grey) or HxWx3 array Gradio can show and save."""
    big = upscale(image, display_scale(image.shape[0]))
    return big[..., 0] if big.shape[-1] == 1 else big


def strip(images: np.ndarray, padding: int = 2) -> np.ndarray:
    """NHWC uint8 -> one row of images separated by ``padding`` grey pixels."""
    n, h, w, c = images.shape
    out = np.full((h, n * w + (n - 1) * padding, c), 96, dtype=np.uint8)
    for i, img in enumerate(images):
        x = i * (w + padding)
        out[:, x : x + w] = img
    return out


def save_gif(frames: Sequence[np.ndarray], path: Path, frame_ms: int = 120, hold_last_ms: int = 1200) -> Path:
    """HxW or HxWx3 uint8 frames -> a looping animated GIF that pauses on the last frame."""
    pictures = [Image.fromarray(f) for f in frames]
    durations = [frame_ms] * (len(pictures) - 1) + [hold_last_ms]
    pictures[0].save(
        path, save_all=True, append_images=pictures[1:], duration=durations, loop=0, optimize=False
    )
    return path


def open_picture(path: str | Path) -> np.ndarray:
    """An uploaded picture as an HxW / HxWx3 / HxWx4 uint8 array, bounded before it is decoded."""
    return _open_picture(path, "the uploaded file", "the demo")


def to_model_polarity(image: np.ndarray) -> np.ndarray:
    """HxWxC uint8 -> HxW grey with light strokes on a dark background, as MNIST digits are.

    Drawings and scans are usually dark ink on light paper; the background is read off the border pixels
    (the median, so strokes that touch the edge do not flip it) and the image is inverted when it is light.
    """
    grey = np.asarray(Image.fromarray(flatten(image)).convert("L"))
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return 255 - grey if np.median(border) > 127 else grey


def center_digit(grey: np.ndarray, size: int, fill: float = 0.7) -> np.ndarray:
    """Crop a light-on-dark drawing to its strokes and centre it at ``size`` pixels, as MNIST was made.

    MNIST fits each digit's bounding box into 20 of 28 pixels (~0.7) and centres it; a sketch drawn in a
    corner or across the whole canvas is brought to the same framing so the model recognises it.
    """
    ys, xs = np.nonzero(grey > 32)
    if len(ys) == 0:
        return np.zeros((size, size), dtype=np.uint8)
    crop = grey[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    box = max(1, round(size * fill))
    scale = box / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    small = Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = Image.new("L", (size, size), 0)
    out.paste(small, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(out)


def to_model_colour(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWxC uint8 -> the RGB picture a colour model starts from: as drawn (transparency flattened), resized
    to ``size`` (height, width) as the runtime resizes it. No inversion, no cropping: colour models are not
    trained on light-on-dark strokes."""
    rgb = Image.fromarray(flatten(image)).convert("RGB")
    return np.asarray(rgb.resize(size[::-1], Image.Resampling.BILINEAR))


def flatten(image: np.ndarray) -> np.ndarray:
    """Drop alpha by compositing on the background the strokes do not use (white under dark ink)."""
    if image.ndim == 2 or image.shape[-1] in (1, 3):
        return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    rgb, alpha = image[..., :3].astype(np.float32), image[..., 3:4].astype(np.float32) / 255.0
    drawn = alpha[..., 0] > 0.5
    ink = rgb[drawn].mean() if drawn.any() else 0.0
    background = 255.0 if ink < 128 else 0.0
    return (rgb * alpha + background * (1 - alpha)).round().astype(np.uint8)
