"""Does the model copy its training images? The share of generated images that lie closer to a training image
than training images lie to each other, in pixels.

With a small data set a diffusion model can learn to reproduce its training images instead of drawing new
ones. The yardstick is the data set itself: ``threshold`` is the median, over the training images, of the
distance to the nearest *other* training image. A generated image closer than that to some training image is
as close as a near-neighbour in the data set, a candidate copy.

How to read ``share_below``: real images the model never saw (held-out ones, passed as ``generated``) score
about half, since the threshold is the median of the same kind of distance; a model that draws new images
scores roughly what held-out images score, and one that copies its training set scores near 100%. Compare the
two, class by class too: simple classes sit closer together (held-out MNIST ones all score below, twos 14%), so
a model that favours them scores higher without copying. Pixel distance sees copies and near-copies (a shifted
or recoloured copy escapes it); it says nothing about quality.

Distances are per-pixel RMS on [0, 1] (L2 / sqrt(H*W*C)), so they compare across image sizes and data sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.images import upscale

if TYPE_CHECKING:
    from PIL import Image

CHUNK_BYTES = 32 << 20  # float64 pixels of one chunk of images: memory stays ~100 MB whatever N and M are
MAX_CHUNK_ROWS = 1024  # and the (rows x rows) block of distances at most 8 MB
PICTURE_SIDE = 64  # small images are enlarged (nearest neighbour) to at least this many pixels a side
PAIRS_PER_ROW = 8


@dataclass(frozen=True)
class Memorisation:
    share_below: float  # of the generated images, the share closer to a training image than ``threshold``
    threshold: float  # median over training images of the RMS distance to the nearest other training image
    num_generated: int
    num_training: int
    median_nearest: float  # median over generated images of the distance to their nearest training image
    nearest_index: np.ndarray  # (N,) int64: the nearest training image of each generated one
    nearest_distance: np.ndarray  # (N,) float64: its RMS distance
    per_class_share: dict[str, float] | None  # share_below among the images asked for each class

    def to_json(self) -> dict[str, Any]:
        """The scalars, for a report; the per-image arrays stay out."""
        arrays = ("nearest_index", "nearest_distance")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in arrays}


def memorisation(
    generated: np.ndarray,
    training: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    *,
    threshold: float | None = None,
) -> Memorisation:
    """Nearest training image of every generated image, and the share closer than the training set's own
    typical nearest-neighbour distance (see the module docstring for how to read it).

    ``generated`` (N, H, W, C) and ``training`` (M, H, W, C) are uint8, C 1 or 3. ``labels``: the class asked
    for per generated image, for ``per_class_share`` keyed by ``class_names`` (or the label as text).
    ``threshold``: from ``training_threshold(training)``, when several sets are judged against one training
    set (generated and held-out images), so its M x M distances are computed once.
    """
    check_images(generated, training)
    labels = None if labels is None else np.asarray(labels)
    names = _class_names(labels, class_names, len(generated))
    if threshold is None:
        threshold = training_threshold(training)
    index, distance = nearest(generated, training)
    below = distance < threshold
    per_class = None
    if labels is not None and names is not None:
        per_class = {str(names[c]): float(below[labels == c].mean()) for c in np.unique(labels)}
    return Memorisation(
        share_below=float(below.mean()),
        threshold=float(threshold),
        num_generated=len(generated),
        num_training=len(training),
        median_nearest=float(np.median(distance)),
        nearest_index=index,
        nearest_distance=distance,
        per_class_share=per_class,
    )


def training_threshold(training: np.ndarray) -> float:
    """Median over training images of the distance to the nearest other one. "Other" is by index, not by a
    distance above 0, so an exact duplicate in the data set counts as the close neighbour it is."""
    check_images(training, training)
    return _median_nearest_other(training)


def share_below_in_features(generated: np.ndarray, training: np.ndarray) -> float:
    """The same share for feature vectors, (N, D) and (M, D) floats, e.g. the judge's: a sample near a
    training image in content rather than in pixels (pixel distance also calls a faint, blurry sample close
    to any image that is mostly background)."""
    if (
        generated.ndim != 2
        or training.ndim != 2
        or generated.shape[1] != training.shape[1]
        or len(training) < 2
    ):
        raise InputError(
            f"feature memorisation needs (N, D) and (M, D) arrays, M >= 2: got generated "
            f"{_describe(generated)} and training {_describe(training)}"
        )
    return float((nearest(generated, training)[1] < _median_nearest_other(training)).mean())


def _median_nearest_other(training: np.ndarray) -> float:
    return float(np.median(nearest(training, training, exclude_self=True)[1]))


def check_images(generated: np.ndarray, training: np.ndarray) -> None:
    """Both uint8 (count, H, W, C) with C 1 or 3, the same H, W, C, at least 1 generated and 2 training images
    (a nearest *other* training image must exist); else one line naming both."""
    ok = all(isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 4 for a in (generated, training))
    ok = ok and generated.shape[1:] == training.shape[1:] and generated.shape[-1] in (1, 3)
    ok = ok and min(generated.shape[1:3]) > 0 and len(generated) >= 1 and len(training) >= 2
    if not ok:
        raise InputError(
            "memorisation needs uint8 arrays (count, H, W, C), C 1 or 3, the same H, W, C, at least 1 generated "
            f"and 2 training images: got generated {_describe(generated)} and training {_describe(training)}"
        )


def _describe(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.dtype} {tuple(array.shape)}"
    return type(array).__name__


def _class_names(
    labels: np.ndarray | None, class_names: Sequence[str] | None, count: int
) -> list[str] | None:
    """Names indexed by label, after checking ``labels`` is one integer class >= 0 per generated image."""
    if labels is None:
        return None
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise InputError(
            f"labels must be {count} integer classes >= 0, one per generated image: got {_describe(labels)}"
        )
    top = int(labels.max())
    if class_names is None:
        return [str(c) for c in range(top + 1)]
    if top >= len(class_names):
        raise InputError(f"label {top} has no name: {len(class_names)} class names given")
    return list(class_names)


def nearest(
    queries: np.ndarray, references: np.ndarray, *, exclude_self: bool = False, chunk_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Index (int64) and RMS distance on [0, 1] (float64) of each query's nearest reference image.

    |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, on chunks of both sets so memory stays bounded. The pixels stay the
    integers 0..255 in float64, so every product and sum is an exact integer (below 2^53) and the expansion
    loses nothing to cancellation: a duplicate is at exactly 0. ``exclude_self``: the queries are the
    references, and image i may not be its own neighbour. Ties go to the lowest index.
    """
    size = math.prod(queries.shape[1:])
    rows = chunk_rows or max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // (8 * size)))
    index = np.zeros(len(queries), dtype=np.int64)
    squared = np.full(len(queries), np.inf)
    for q0 in range(0, len(queries), rows):
        q = queries[q0 : q0 + rows].reshape(-1, size).astype(np.float64)
        q_norms = np.einsum("ij,ij->i", q, q)
        for r0 in range(0, len(references), rows):
            r = references[r0 : r0 + rows].reshape(-1, size).astype(np.float64)
            block = q_norms[:, None] + np.einsum("ij,ij->i", r, r)[None, :] - 2.0 * (q @ r.T)
            if exclude_self:
                both = np.arange(max(q0, r0), min(q0 + len(q), r0 + len(r)))
                block[both - q0, both - r0] = np.inf
            best = block.argmin(axis=1)
            value = block[np.arange(len(q)), best]
            better = value < squared[q0 : q0 + len(q)]  # strict: an earlier chunk keeps a tie
            squared[q0 : q0 + len(q)][better] = value[better]
            index[q0 : q0 + len(q)][better] = best[better] + r0
    return index, np.sqrt(squared) / (255.0 * math.sqrt(size))


def closest_pairs_picture(
    generated: np.ndarray, training: np.ndarray, result: Memorisation, count: int = 16
) -> Image.Image:
    """The ``count`` generated images closest to a training image (the likeliest copies), each above its
    nearest training image and captioned with their distance, red when below the threshold. Returns an RGB
    PIL image; save it with ``runtime.images.save_png(np.asarray(picture), path)``."""
    from PIL import Image, ImageDraw, ImageFont

    check_images(generated, training)
    if (len(generated), len(training)) != (result.num_generated, result.num_training):
        raise InputError(
            f"the result is of {result.num_generated} generated and {result.num_training} training images, "
            f"not of the {len(generated)} and {len(training)} given"
        )
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}")
    order = np.argsort(result.nearest_distance, kind="stable")[:count]
    height, width = generated.shape[1:3]
    scale = max(1, math.ceil(PICTURE_SIDE / min(height, width)))
    side_h, side_w, frame, caption = height * scale, width * scale, 4, 16
    font = ImageFont.load_default(size=12)
    title = (
        f"the {len(order)} of {result.num_generated} generated images (top) closest to a training image "
        f"(below)\nRMS distance, red: below the threshold {result.threshold:.3f} (share below "
        f"{result.share_below:.1%})"
    )
    per_row = min(len(order), PAIRS_PER_ROW)
    cell_w, cell_h = side_w + 2 * frame, 2 * side_h + 3 * frame + caption
    rows = math.ceil(len(order) / per_row)
    _, _, title_w, title_h = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox(
        (4, 4), title, font=font
    )
    top = round(title_h) + 4
    size = (
        max(per_row * (cell_w + frame) + frame, round(title_w) + 4),
        top + rows * (cell_h + frame) + frame,
    )
    picture = Image.new("RGB", size, (96, 96, 96))  # mid grey: apart from black digits and white frames
    draw = ImageDraw.Draw(picture)
    draw.multiline_text((4, 4), title, fill="white", font=font)
    for k, i in enumerate(order):
        x = frame + (k % per_row) * (cell_w + frame)
        y = top + frame + (k // per_row) * (cell_h + frame)
        draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill="white")
        for j, image in enumerate((generated[i], training[result.nearest_index[i]])):
            pixels = upscale(image, scale)
            tile = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
            picture.paste(tile, (x + frame, y + frame + j * (side_h + frame)))
        distance = float(result.nearest_distance[i])
        colour = "red" if distance < result.threshold else "black"
        xy = (x + cell_w / 2, y + cell_h - frame - caption / 2)
        draw.text(xy, f"{distance:.3f}", fill=colour, font=font, anchor="mm")
    return picture
