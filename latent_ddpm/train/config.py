"""Training recipes: a short commented TOML file (nanoGPT-style) plus `--set section.key=value` overrides.

The dataclasses below are the schema. Every knob has a default here; the recipe and the overrides replace
defaults, and an unknown key or a value of the wrong type or range is a `ConfigError` naming the key and
where it came from, so a typo never silently trains a different model. The resolved recipe travels with
the trained model (``latent_ddpm.json``) and with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from latent_ddpm.train.errors import ConfigError

SHIPPED = "latent_ddpm.train.configs"


@dataclass
class DataConfig:
    source: str = "mnist_5k"
    image_size: int = 32
    channels: int = 1
    fit: str = "pad"
    max_images: int = 0


@dataclass
class OptimConfig:
    """Knobs shared by both stages: one optimizer step sees `batch_size` images in `grad_accum` chunks."""

    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    checkpoint_every: int = 500
    sample_every: int = 500


@dataclass
class VAEConfig(OptimConfig):
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    recon_loss: str = "l1"
    kl_weight: float = 1e-4


@dataclass
class UNetConfig(OptimConfig):
    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    attention: list[bool] = field(default_factory=lambda: [False, True, True])
    layers_per_block: int = 2
    attention_head_dim: int = 32
    norm_num_groups: int = 32
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    timestep_spacing: str = "trailing"
    label_dropout: float = 0.1
    latents: str = "posterior"
    ema_decay: float = 0.9995
    ema_power: float = 0.75
    guidance_scale: float = 3.0
    sample_steps: int = 50


@dataclass
class Recipe:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.fit": ("pad", "resize", "crop"),
    "vae.recon_loss": ("l1", "l2"),
    "unet.beta_schedule": ("linear", "squaredcos_cap_v2"),
    "unet.prediction_type": ("epsilon", "sample", "v_prediction"),
    "unet.timestep_spacing": ("leading", "trailing", "linspace"),
    "unet.latents": ("posterior", "mean"),
}


def _schema() -> dict[str, Any]:
    """Flat `section.key` -> type for every knob of `Recipe`."""
    flat: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(Recipe).items():
        if dataclasses.is_dataclass(hint):
            for sub, sub_hint in typing.get_type_hints(hint).items():
                flat[f"{name}.{sub}"] = sub_hint
        else:
            flat[name] = hint
    return flat


SCHEMA = _schema()


def shipped_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(SHIPPED).iterdir() if p.name.endswith(".toml"))


def resolve_recipe_path(spec: str) -> Path:
    """`spec` is a path to a .toml file or the name of a recipe shipped in the package (e.g. `digits`)."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.suffix != ".toml" and spec in shipped_recipes():
        return Path(str(resources.files(SHIPPED) / f"{spec}.toml"))
    raise ConfigError(
        f"recipe {spec!r} is neither a file nor a shipped recipe (shipped: {', '.join(shipped_recipes())})"
    )


def load_recipe(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Recipe, Path]:
    """Read the TOML recipe `spec`, apply `--set key=value` overrides in order, validate everything."""
    path = resolve_recipe_path(spec)
    try:
        tree = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from exc
    flat: dict[str, Any] = {}
    _flatten(tree, "", flat, where=str(path))
    for item in overrides:
        key, value = parse_override(item)
        flat[key] = value
    return build_recipe(flat, where=str(path)), path


def parse_override(item: str) -> tuple[str, Any]:
    """`unet.lr=2e-4` -> ("unet.lr", 0.0002); values are TOML literals, bare words are strings."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set unet.lr=2e-4")
    _check_key(key, where="--set")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key, value


def build_recipe(flat: dict[str, Any], where: str = "recipe") -> Recipe:
    """Defaults, replaced by the (already flat, `section.key`) values in `flat`, type-checked and validated."""
    sections: dict[str, dict[str, Any]] = {"data": {}, "vae": {}, "unet": {}}
    top: dict[str, Any] = {}
    for key, value in flat.items():
        _check_key(key, where)
        value = _coerce(key, value, SCHEMA[key], where)
        if "." in key:
            section, name = key.split(".", 1)
            sections[section][name] = value
        else:
            top[key] = value
    recipe = Recipe(
        data=DataConfig(**sections["data"]),
        vae=VAEConfig(**sections["vae"]),
        unet=UNetConfig(**sections["unet"]),
        **top,
    )
    _validate(recipe, where)
    return recipe


def _flatten(tree: dict[str, Any], prefix: str, out: dict[str, Any], where: str) -> None:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            if key not in ("data", "vae", "unet"):
                _check_key(key, where)  # raises: only the three sections are tables
            _flatten(value, f"{key}.", out, where)
        else:
            out[key] = value


def _check_key(key: str, where: str) -> None:
    if key not in SCHEMA:
        close = difflib.get_close_matches(key, SCHEMA, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(SCHEMA)})"
        raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def _coerce(key: str, value: Any, hint: Any, where: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key} must be {expected}, got {value!r}")

    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise bad(f"a list of {item_type.__name__}")
        return [_coerce(key, v, item_type, where) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if not isinstance(value, str):
        raise bad("a string")
    return value


def _validate(r: Recipe, where: str) -> None:
    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            section, _, name = key.partition(".")
            value = getattr(getattr(r, section), name) if name else getattr(r, section)
            raise ConfigError(f"{where}: {key} = {value!r} is invalid: {rule}")

    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        need(getattr(getattr(r, section), name) in allowed, key, f"expected one of {', '.join(allowed)}")
    need(r.data.image_size > 0, "data.image_size", "must be positive")
    need(r.data.channels in (1, 3), "data.channels", "must be 1 (grey) or 3 (RGB)")
    need(r.data.max_images >= 0, "data.max_images", "must be >= 0 (0 = all)")
    for name in ("vae", "unet"):
        s: OptimConfig = getattr(r, name)
        for knob in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            need(getattr(s, knob) > 0, f"{name}.{knob}", "must be positive")
        need(s.sample_every >= 0, f"{name}.sample_every", "must be >= 0 (0 = only at the end)")
        need(s.batch_size % s.grad_accum == 0, f"{name}.batch_size", "must be a multiple of grad_accum")
        need(s.lr > 0, f"{name}.lr", "must be positive")
        need(0 <= s.warmup_steps < s.steps, f"{name}.warmup_steps", "must be in [0, steps)")
        need(s.max_grad_norm > 0, f"{name}.max_grad_norm", "must be positive")
        channels = getattr(r, name).block_out_channels
        need(len(channels) >= 1, f"{name}.block_out_channels", "needs at least one level")
        groups = getattr(r, name).norm_num_groups
        need(
            all(c % groups == 0 for c in channels),
            f"{name}.norm_num_groups",
            "must divide every channel count",
        )
    factor = 2 ** (len(r.vae.block_out_channels) - 1)
    need(
        r.data.image_size % factor == 0,
        "data.image_size",
        f"must be divisible by the VAE's {factor}x downsampling",
    )
    latent = r.data.image_size // factor
    unet_factor = 2 ** (len(r.unet.block_out_channels) - 1)
    need(
        latent % unet_factor == 0,
        "unet.block_out_channels",
        f"{latent}px latents cannot be halved that often",
    )
    need(
        len(r.unet.attention) == len(r.unet.block_out_channels), "unet.attention", "needs one flag per level"
    )
    need(r.unet.attention_head_dim > 0, "unet.attention_head_dim", "must be positive")
    need(0 <= r.unet.label_dropout < 1, "unet.label_dropout", "must be in [0, 1)")
    need(0 <= r.unet.ema_decay < 1, "unet.ema_decay", "must be in [0, 1)")
    need(r.unet.sample_steps > 0, "unet.sample_steps", "must be positive")
    need(r.unet.guidance_scale >= 1, "unet.guidance_scale", "must be >= 1 (1 = no guidance)")
    need(0 < r.unet.beta_start < r.unet.beta_end < 1, "unet.beta_end", "need 0 < beta_start < beta_end < 1")
