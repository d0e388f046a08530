"""Read a diffusers-format latent DDPM directory and everything a bundle needs from its own configs.

Accepted layouts: ``LDMPipeline.save_pretrained`` (``unet/``, ``vqvae/``, ``scheduler/``, ``model_index.json``),
as the public CompVis latent-diffusion checkpoints are laid out, and our training's output (``unet/``,
``vae/``, ``scheduler/``, ``latent_ddpm.json``). Every problem is an ExportError naming the file or class,
found before anything is written. Weights load through diffusers: safetensors, or ``.bin`` files only with
``torch.load(weights_only=True)``, which we check ourselves first so a pickle never runs code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from latent_ddpm.export.errors import ExportError
from latent_ddpm.runtime.bundle import PREDICTION_TYPES, SAMPLERS, SamplingDefaults

METADATA_FILE = "latent_ddpm.json"
MODEL_INDEX_FILE = "model_index.json"
UNET_CLASSES = ("UNet2DModel",)
VAE_CLASSES = ("AutoencoderKL", "VQModel")
VAE_FOLDERS = ("vae", "vqvae")
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)
DEFAULTS = asdict(SamplingDefaults())  # what a bundle says when latent_ddpm.json gives no defaults


@dataclass(frozen=True)
class Conditioning:
    num_class_embeds: int  # rows of the U-Net's class embedding: labels fed to it are < this
    class_names: tuple[str, ...]
    null_class: int | None


@dataclass
class Source:
    """A loaded source model and the facts about it that go into bundle.json."""

    path: Path
    unet: Any  # diffusers.UNet2DModel, float32, eval mode
    vae: Any  # diffusers.AutoencoderKL or VQModel, float32, eval mode
    vae_folder: str
    scheduler_config: dict[str, Any]
    metadata: dict[str, Any] | None
    latent_shape: tuple[int, int, int]
    image_shape: tuple[int, int, int]
    scaling_factor: float
    shift_factor: float | None
    prediction_type: str
    conditioning: Conditioning | None
    defaults: dict[str, Any]

    @property
    def unet_class(self) -> str:
        return type(self.unet).__name__

    @property
    def vae_class(self) -> str:
        return type(self.vae).__name__

    @property
    def is_vq(self) -> bool:
        return self.vae_class == "VQModel"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def has_encoder(self) -> bool:
        """img2img needs images in the decoder's format; a VAE whose encoder takes other channels gets none."""
        return int(self.vae.config.in_channels) == self.image_shape[0]


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ExportError(f"{path}: missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def load_source(path: str | Path) -> Source:
    """Read and check SRC; raises ExportError on the first problem, naming the file."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ExportError(f"source directory not found: {root}")
    vae_folder = _vae_folder(root)
    unet_config = _component_config(root / "unet", UNET_CLASSES, "U-Net")
    vae_config = _component_config(root / vae_folder, VAE_CLASSES, "autoencoder")
    _check_unet_config(root / "unet" / "config.json", unet_config)
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    scheduler_config = read_json(scheduler_path)
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ExportError(
            f"{scheduler_path}: prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}"
        )
    metadata = read_json(root / METADATA_FILE) if (root / METADATA_FILE).exists() else None

    import diffusers

    unet = _load_model(root / "unet", getattr(diffusers, unet_config["_class_name"]))
    vae = _load_model(root / vae_folder, getattr(diffusers, vae_config["_class_name"]))

    latent_shape = _latent_shape(root, unet, vae)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    image_shape = (int(vae.config.out_channels), latent_shape[1] * factor, latent_shape[2] * factor)
    conditioning = _conditioning(root, unet, metadata)
    defaults = _defaults(root, metadata, conditioning, scheduler_config)
    if metadata is not None:
        _check_metadata_geometry(root / METADATA_FILE, metadata, image_shape)
    shift = getattr(vae.config, "shift_factor", None)
    scaling = float(vae.config.scaling_factor)
    if not (math.isfinite(scaling) and scaling > 0):
        raise ExportError(
            f"{root / vae_folder / 'config.json'}: scaling_factor must be positive, got {scaling}"
        )
    return Source(
        path=root.resolve(),
        unet=unet,
        vae=vae,
        vae_folder=vae_folder,
        scheduler_config=scheduler_config,
        metadata=metadata,
        latent_shape=latent_shape,
        image_shape=image_shape,
        scaling_factor=scaling,
        shift_factor=None if shift is None else float(shift),
        prediction_type=prediction_type,
        conditioning=conditioning,
        defaults=defaults,
    )


def _vae_folder(root: Path) -> str:
    if (root / MODEL_INDEX_FILE).exists():
        index = read_json(root / MODEL_INDEX_FILE)
        named = [f for f in VAE_FOLDERS if f in index]
        if len(named) == 1:
            return named[0]
        if not named:
            raise ExportError(
                f"{root / MODEL_INDEX_FILE}: names no 'vae' or 'vqvae' component (has {', '.join(sorted(index))}); "
                "latent-ddpm exports latent diffusion pipelines (U-Net + autoencoder + scheduler)"
            )
    present = [f for f in VAE_FOLDERS if (root / f).is_dir()]
    if len(present) != 1:
        raise ExportError(
            f"{root}: expected exactly one autoencoder folder, 'vae/' or 'vqvae/', found "
            f"{', '.join(present) if present else 'neither'}"
        )
    return present[0]


def _component_config(folder: Path, classes: tuple[str, ...], what: str) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise ExportError(
            f"{folder}: missing; a diffusers latent DDPM has unet/, vae/ (or vqvae/) and scheduler/"
        )
    config = read_json(config_path)
    name = config.get("_class_name")
    if name not in classes:
        raise ExportError(
            f"{config_path}: unsupported {what} class {name!r}; latent-ddpm exports {' or '.join(classes)}"
            + (" (text-conditioned U-Nets are out of scope)" if name == "UNet2DConditionModel" else "")
        )
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        found = sorted(p.name for p in folder.iterdir() if p.name != "config.json")
        raise ExportError(
            f"{folder}: no weights; expected {WEIGHT_FILES[0]} (or {WEIGHT_FILES[2]}), found "
            f"{', '.join(found) if found else 'nothing'}"
        )
    return config


def _check_unet_config(path: Path, config: dict[str, Any]) -> None:
    if config.get("class_embed_type") is not None:
        raise ExportError(
            f"{path}: class_embed_type {config['class_embed_type']!r} is not supported; latent-ddpm exports "
            "class conditioning through num_class_embeds (integer labels)"
        )
    if config.get("time_embedding_type", "positional") not in ("positional", "learned"):
        raise ExportError(
            f"{path}: time_embedding_type {config['time_embedding_type']!r} is not supported (integer timesteps only)"
        )
    if config.get("in_channels") != config.get("out_channels"):
        raise ExportError(
            f"{path}: out_channels {config.get('out_channels')} != in_channels {config.get('in_channels')}; "
            "U-Nets that also predict a variance are not supported"
        )


def _load_model(folder: Path, cls: type) -> Any:
    import torch
    from diffusers.utils import logging as diffusers_logging

    use_safetensors = any((folder / f).is_file() for f in WEIGHT_FILES[:2])
    for path in sorted(folder.glob("diffusion_pytorch_model*.safetensors")):
        _check_safetensors(path)
    if not use_safetensors:
        for path in sorted(
            folder.glob("diffusion_pytorch_model*.bin")
        ):  # diffusers would load these; make sure that only ever means weights_only
            try:
                torch.load(path, map_location="meta", weights_only=True)
            except Exception as exc:
                raise ExportError(
                    f"{path}: cannot be read as plain weights (torch.load weights_only=True): {_first_line(exc)}"
                ) from None
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # missing keys are reported below, as an error
    try:
        model, info = cls.from_pretrained(
            folder,
            torch_dtype=torch.float32,
            local_files_only=True,
            use_safetensors=use_safetensors,
            output_loading_info=True,
        )
    except Exception as exc:  # diffusers raises OSError/ValueError/RuntimeError/safetensors errors
        raise ExportError(f"{folder}: cannot load {cls.__name__} weights: {_first_line(exc)}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        bad = info.get(key) or []
        if bad:
            shown = ", ".join(str(k) for k in list(bad)[:5]) + (" ..." if len(bad) > 5 else "")
            raise ExportError(
                f"{folder}: weights do not match config.json ({len(bad)} {key.replace('_', ' ')}: {shown}); "
                "the checkpoint is truncated or belongs to another model"
            )
    return model.float().eval().requires_grad_(False)


def _check_safetensors(path: Path) -> None:
    """A truncated download is the usual corruption: compare the file with what its header promises."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len <= size - 8:
                raise ValueError(f"header length {header_len}")
            header = json.loads(f.read(header_len))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ExportError(f"{path}: not a safetensors file ({exc})") from None
    if size < 8 + header_len + end:
        raise ExportError(f"{path}: truncated ({size} bytes, its header promises {8 + header_len + end})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _latent_shape(root: Path, unet: Any, vae: Any) -> tuple[int, int, int]:
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    c = int(unet.config.in_channels)
    vae_c = getattr(vae.config, "vq_embed_dim", None) or vae.config.latent_channels
    if c != vae_c:
        raise ExportError(
            f"{root}: unet/config.json in_channels {c} != the autoencoder's latent channels {vae_c}; "
            "the U-Net and autoencoder do not belong together"
        )
    return c, int(h), int(w)


def _conditioning(root: Path, unet: Any, metadata: dict[str, Any] | None) -> Conditioning | None:
    embeds = unet.config.num_class_embeds
    meta_path = root / METADATA_FILE
    names = (metadata or {}).get("class_names") or []
    if embeds is None:
        if names:
            raise ExportError(f"{meta_path}: lists {len(names)} class names, but the U-Net is unconditional")
        return None
    if metadata is None or "class_names" not in metadata:
        return Conditioning(int(embeds), tuple(str(i) for i in range(embeds)), None)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ExportError(f"{meta_path}: class_names must be a list of strings")
    null = metadata.get("null_class")
    if null is not None and (isinstance(null, bool) or not isinstance(null, int)):
        raise ExportError(f"{meta_path}: null_class must be an integer or null, got {null!r}")
    if not names:
        raise ExportError(
            f"{meta_path}: class_names is empty, but the U-Net is class-conditional ({embeds} labels)"
        )
    used = len(names) if null is None else max(len(names), null + 1)
    if used > embeds or (null is not None and not 0 <= null <= len(names)):
        raise ExportError(
            f"{meta_path}: {len(names)} classes with null_class {null} do not fit the U-Net's "
            f"num_class_embeds {embeds}"
        )
    return Conditioning(int(embeds), tuple(names), null)


def _defaults(
    root: Path, metadata: dict[str, Any] | None, cond: Conditioning | None, scheduler_config: dict[str, Any]
) -> dict[str, Any]:
    meta_path = root / METADATA_FILE
    given = (metadata or {}).get("defaults") or {}
    if not isinstance(given, dict):
        raise ExportError(f"{meta_path}: defaults must be a JSON object")
    defaults = {**DEFAULTS, **{k: v for k, v in given.items() if k in DEFAULTS}}
    if defaults["sampler"] not in SAMPLERS:
        raise ExportError(
            f"{meta_path}: defaults.sampler {defaults['sampler']!r} is not one of {', '.join(SAMPLERS)}"
        )
    steps = defaults["steps"]
    max_steps = int(scheduler_config.get("num_train_timesteps", 1000))
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= max_steps:
        raise ExportError(f"{meta_path}: defaults.steps must be an integer in 1..{max_steps}, got {steps!r}")
    for key in ("guidance_scale", "eta"):
        value = defaults[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ExportError(f"{meta_path}: defaults.{key} must be a number >= 0, got {value!r}")
        defaults[key] = float(value)
    if defaults["guidance_scale"] != 1.0 and (cond is None or cond.null_class is None):
        raise ExportError(
            f"{meta_path}: defaults.guidance_scale {defaults['guidance_scale']} needs a class-conditional model "
            "with a null_class"
        )
    return defaults


def _check_metadata_geometry(path: Path, metadata: dict[str, Any], image_shape: tuple[int, int, int]) -> None:
    size = metadata.get("image_size")
    if size is not None and list(size) != list(image_shape[1:]):
        raise ExportError(
            f"{path}: image_size {size} does not match the models' {list(image_shape[1:])} "
            "(U-Net sample_size x the autoencoder's downsampling)"
        )
    channels = metadata.get("image_channels")
    if channels is not None and channels != image_shape[0]:
        raise ExportError(
            f"{path}: image_channels {channels} != the autoencoder's out_channels {image_shape[0]}"
        )
