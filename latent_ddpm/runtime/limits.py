"""The bounds on what one request may ask for, in one place: the Pipeline, every CLI and the demo import them.

Each bound exists because crossing it returned blank images as a success or exhausted the machine:

- ``guidance_scale``: classifier-free guidance extrapolates eps_cond - eps_uncond by w (Ho & Salimans 2022,
  eq. 6). Useful values are 1..~10; at 1e20 the extrapolation swamps the sample (flat grey images) and at
  3.4e38 it overflows float32 (NaN, black images). 20 is twice the largest value in common use and what the
  demo's slider always offered.
- ``eta``: DDIM's sigma_t(eta) = eta * sigma_t(1) (Song et al. 2021, eq. 16). Above 1 the "direction to x_t"
  takes the square root of 1 - alpha_{t-1} - sigma_t^2 < 0: NaN, black images.
- images per call: the whole batch's latents, step noise and images live in memory at once; 10^6 images
  allocated 3 GB before failing inside ONNX Runtime. The limit is an argument (``max_images`` /
  ``--max-images``) so that a user who has the memory can raise it knowingly; U-Net calls take at most
  ``DEFAULT_MAX_ROWS`` rows and decoder/encoder calls ``DEFAULT_BATCH_SIZE`` images whatever the request,
  so a large request costs memory for its latents and images, not for a huge engine batch.
- rows per U-Net call (the row budget of a SamplingEngine tick): a guided image is two rows, [null; cond].
  Beyond the batch where images/s stops growing a bigger call only adds latency for everyone in it.
- images held by a SamplingEngine (queued or running): each holds its arguments (img2img: its pictures)
  and, once admitted, its latents; past the bound a submission is refused as busy, so that a burst of
  requests cannot exhaust memory.
- threads: more intra-op threads than usable cores do not run faster, they contend; 1000 threads kept ONNX
  Runtime busy creating and spinning threads for over 90 s.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from latent_ddpm.errors import InputError
from latent_ddpm.provenance import usable_cores

MIN_GUIDANCE_SCALE = 0.0
MAX_GUIDANCE_SCALE = 20.0
MAX_ETA = 1.0
# img2img: the share of the schedule that runs (SDEdit); 0.6 keeps the picture's layout and redraws its strokes.
DEFAULT_STRENGTH = 0.6
# Images per generate/img2img call unless the caller raises it. 1024 digits are 1 MB of images; 1024 images of
# a 256x256 RGB model are 200 MB of images plus ~50 MB per copy of their 3x64x64 latents.
DEFAULT_MAX_IMAGES = 1024
# Images per decoder/encoder call: 64 is the demo's largest request, decoded in one call.
DEFAULT_BATCH_SIZE = 64
# U-Net rows per call (a SamplingEngine's row budget): where the digits U-Net's rows/s stops growing. Idle,
# 16 -> 64 rows gave +27% (docs/benchmarks: guided batch 8 -> 32, 12.4 -> 15.8 images/s, "best throughput by
# batch 32"); on the loaded machine rows/s was flat from 64 to 512 rows (`bench --models serving`, the U-Net
# by call size). Past it a bigger call only makes every request in it wait longer for each step.
DEFAULT_MAX_ROWS = 64
# Images a SamplingEngine holds at once (queued and running) by default: one request at the max_images limit.
DEFAULT_MAX_PENDING_IMAGES = DEFAULT_MAX_IMAGES


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_guidance_scale(value: Any, name: str = "guidance_scale") -> float:
    """A finite number in [MIN_GUIDANCE_SCALE, MAX_GUIDANCE_SCALE]; 1 means no guidance."""
    if not _real(value) or not MIN_GUIDANCE_SCALE <= value <= MAX_GUIDANCE_SCALE:
        raise InputError(
            f"{name} must be a number in {MIN_GUIDANCE_SCALE:g}..{MAX_GUIDANCE_SCALE:g} (1 = no guidance), "
            f"got {value!r}"
        )
    return float(value)


def check_eta(value: Any, name: str = "eta") -> float:
    """DDIM's eta in [0, MAX_ETA]: 0 is deterministic DDIM, 1 has DDPM's posterior variance."""
    if not _real(value) or not 0.0 <= value <= MAX_ETA:
        raise InputError(
            f"{name} must be a number in 0..{MAX_ETA:g} (0 deterministic, 1 DDPM-like), got {value!r}"
        )
    return float(value)


def check_strength(value: Any, name: str = "strength") -> float:
    """img2img's strength in [0, 1]: 0 returns the picture's reconstruction, 1 starts from (almost) pure noise."""
    if not _real(value) or not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def check_count(value: Any, name: str, limit: int, how_to_raise: str = "") -> int:
    """An integer in 1..limit (images per call, engine batch size); ``how_to_raise`` says how to allow more."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    if int(value) > limit:
        hint = f"; {how_to_raise}" if how_to_raise else ""
        raise InputError(f"{name}={value} is more than the limit of {limit} per call{hint}")
    return int(value)


def check_max_rows(value: Any, can_guide: bool) -> int:
    """The row budget of a U-Net call: at least 2 when a guided image (two rows) must fit one call."""
    rows = check_count(value, "max_rows", 2**31 - 1)
    if can_guide and rows < 2:
        raise InputError(
            "max_rows must be at least 2 for a model with guidance: a guided image is two U-Net rows"
        )
    return rows


def check_num_images(value: Any, limit: int) -> int:
    return check_count(
        value,
        "num_images",
        limit,
        "raise it with Pipeline(max_images=...) or --max-images if you have the memory, or make several calls",
    )


def check_threads(threads: Any, name: str = "threads") -> int | None:
    """None (the backend's default: all cores) or 1..usable_cores(); anything else is refused with why."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or int(threads) < 1:
        raise InputError(f"{name} must be a positive integer, got {threads!r}")
    cores = usable_cores()
    if int(threads) > cores:
        raise InputError(
            f"{name} {threads} is more than the {cores} usable cores of this machine; more threads only "
            f"contend (use at most {cores}, or leave it unset for all cores)"
        )
    return int(threads)
