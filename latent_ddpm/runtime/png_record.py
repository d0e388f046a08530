"""The generation parameters that every PNG written by `latent-ddpm sample` carries, and reading them back.

As other diffusion tools keep theirs in PNG text chunks (AUTOMATIC1111's ``parameters``, ComfyUI's
``prompt``), each PNG gets a tEXt chunk ``latent-ddpm`` holding JSON: the bundle's name and hash
(``bundle.bundle_hash``), sampler, steps, guidance scale, eta, one seed per image, the class labels as given
(null: each image drew its class from its seed, or the model is unconditional), img2img's strength and picture
(the path as given and its sha256), whether the file is a grid or one image, and its --scale. Class names,
backend and precision are there for people and not read back. A grid records every image's seed; image k's
own file records seed + k alone, which regenerates it (``seeds.py``). `latent-ddpm sample --from-png FILE`
reads a record back and makes the same images, bit for bit on the same backend.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latent_ddpm.errors import CLIError
from latent_ddpm.runtime.limits import check_eta, check_guidance_scale, check_strength
from latent_ddpm.runtime.schedulers import SAMPLERS
from latent_ddpm.runtime.seeds import check_seeds

KEY = "latent-ddpm"  # the tEXt chunk's keyword
FORMAT = "latent-ddpm-sample"
VERSION = 1
LAYOUTS = ("grid", "image")  # --out holds all images in a grid, or a file holds one image
# --scale enlarges pictures for viewing: 16 makes a 32x32 digit 512x512.
MAX_SCALE = 16


@dataclass(frozen=True)
class InitImage:
    """img2img's starting picture: how much of the schedule ran, the path as given, the file's sha256."""

    strength: float
    path: str
    sha256: str


@dataclass(frozen=True)
class SampleRecord:
    bundle_name: str
    bundle_hash: str
    sampler: str
    steps: int  # scheduled steps (img2img runs the last int(steps * strength) of them)
    guidance_scale: float
    eta: float
    seeds: tuple[int, ...]  # one per image
    class_labels: tuple[int, ...] | None  # one per image as given; None: drawn from each image's seed
    init_image: InitImage | None
    layout: str
    scale: int
    classes: tuple[str, ...] | None = None  # for people: the classes the images have
    backend: str = ""  # for people: what sampled them
    precision: str = ""

    def image(self, k: int) -> SampleRecord:
        """The record of image ``k`` alone (its own file)."""
        return dataclasses.replace(
            self,
            seeds=(self.seeds[k],),
            class_labels=None if self.class_labels is None else (self.class_labels[k],),
            classes=None if self.classes is None else (self.classes[k],),
            layout="image",
        )

    def to_json(self) -> dict[str, Any]:
        init = self.init_image
        return {
            "format": FORMAT,
            "version": VERSION,
            "bundle": {"name": self.bundle_name, "hash": self.bundle_hash},
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "eta": self.eta,
            "seeds": list(self.seeds),
            "class_labels": None if self.class_labels is None else list(self.class_labels),
            "img2img": None if init is None else dataclasses.asdict(init),
            "layout": self.layout,
            "scale": self.scale,
            "classes": None if self.classes is None else list(self.classes),
            "backend": self.backend,
            "precision": self.precision,
        }

    def png_text(self) -> dict[str, str]:
        """The PNG text chunks: keyword -> text (ASCII JSON, so a plain tEXt chunk)."""
        from latent_ddpm import __version__

        return {
            KEY: json.dumps(self.to_json(), separators=(",", ":")),
            "Software": f"latent-ddpm {__version__}",
        }

    @classmethod
    def from_json(cls, data: Any) -> SampleRecord:
        """A record from its JSON, every value checked; ValueError names the first bad one."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} record")
        if _get(data, "version", int) != VERSION:
            raise ValueError(f"version {data['version']!r} is not {VERSION}; a newer latent-ddpm wrote it")
        bundle = _get(data, "bundle", dict)
        sampler = _get(data, "sampler", str)
        if sampler not in SAMPLERS:
            raise ValueError(f"'sampler' {sampler!r} is not one of {', '.join(SAMPLERS)}")
        steps = _get(data, "steps", int)
        if steps < 1:
            raise ValueError(f"'steps' must be at least 1, got {steps}")
        _, seeds = check_seeds(_get(data, "seeds", list), None)
        labels = _get(data, "class_labels", (list, type(None)))
        if labels is not None and (
            len(labels) != len(seeds) or not all(type(k) is int and k >= 0 for k in labels)
        ):
            raise ValueError(f"'class_labels' must hold one class index >= 0 per seed, got {labels!r:.80}")
        init = _get(data, "img2img", (dict, type(None)))
        layout = _get(data, "layout", str)
        if layout not in LAYOUTS or (layout == "image" and len(seeds) != 1):
            raise ValueError(f"'layout' must be 'grid', or 'image' with one seed, got {layout!r:.40}")
        scale = _get(data, "scale", int)
        if not 1 <= scale <= MAX_SCALE:
            raise ValueError(f"'scale' must be in 1..{MAX_SCALE}, got {scale}")
        return cls(
            bundle_name=_get(bundle, "name", str),
            bundle_hash=_get(bundle, "hash", str),
            sampler=sampler,
            steps=steps,
            guidance_scale=check_guidance_scale(_get(data, "guidance_scale", (int, float))),
            eta=check_eta(_get(data, "eta", (int, float))),
            seeds=seeds,
            class_labels=None if labels is None else tuple(labels),
            init_image=None if init is None else _init_image(init),
            layout=layout,
            scale=scale,
        )


def _init_image(data: Mapping[str, Any]) -> InitImage:
    sha = _get(data, "sha256", str)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"'sha256' of the img2img picture is not a sha256 digest: {sha!r:.80}")
    return InitImage(check_strength(_get(data, "strength", (int, float))), _get(data, "path", str), sha)


def _get(data: Mapping[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    """``data[key]``, refused when missing or of another type (a bool is not a number here)."""
    if key not in data:
        raise ValueError(f"'{key}' is missing")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(f"'{key}' has the wrong type: {value!r:.80}")
    return value


def read_record(path: Path) -> SampleRecord:
    """The record in the PNG ``path``; CLIError (one line, naming the file) if it has none or a bad one."""
    from PIL import Image

    where = f"--from-png {path!s:.200}"
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise CLIError(f"{where} is a {image.format} file, not a PNG written by latent-ddpm sample")
            text = image.text.get(KEY)  # type: ignore[attr-defined]
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise CLIError(f"{where}: no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CLIError(f"{where} is not a PNG Pillow can read ({exc})") from None
    if text is None:
        raise CLIError(
            f"{where} carries no generation parameters (latent-ddpm sample writes them into every PNG, in a "
            f"'{KEY}' text chunk)"
        )
    try:
        return SampleRecord.from_json(json.loads(text))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and InputError are ValueErrors
        raise CLIError(f"{where}: bad generation parameters: {exc}") from None
