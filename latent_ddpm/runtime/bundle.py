"""The bundle: the directory that export writes and the runtime reads (schema in docs/bundle-format.md).

Loading checks everything that can be checked without running a model, so that a corrupted, swapped or
hand-edited bundle fails here with a message naming the file or key, not later inside ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latent_ddpm.errors import BundleError, InputError
from latent_ddpm.runtime.limits import check_eta, check_guidance_scale
from latent_ddpm.runtime.schedulers import PREDICTION_TYPES, SAMPLERS, make_scheduler

FORMAT_NAME = "latent-ddpm-bundle"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
BUNDLE_FILE = "bundle.json"
VALIDATION_FILE = "validation.json"
ENGINES_DIR = "engines"
# Roles the runtime knows; unet and vae_decoder are required, the encoder enables img2img.
REQUIRED_ROLES = ("unet", "vae_decoder")
OPTIONAL_ROLES = ("vae_encoder",)
PRECISIONS = ("fp32", "fp16", "int8", "mixed")
# Reduced execution precisions a backend may run an fp32 bundle in, each only after its gate passed
# (`latent-ddpm validate-precision`, recorded under "precision_gates").
GATED_PRECISIONS = ("bf16",)
TENSOR_DTYPES = ("float32", "float16", "int64", "int32")
# Files a bundle may hold besides its models; anything else is reported as unexpected.
ALLOWED_EXTRA = frozenset({BUNDLE_FILE, VALIDATION_FILE, "README.md", "samples.png"})
# bundle.json is a few kB (trained_betas included: 1000 floats are 20 kB); refuse to read a file meant to
# exhaust memory before parsing it.
MAX_BUNDLE_JSON_BYTES = 16 * 2**20
# Integers in bundle.json are shapes, steps, labels and versions; one beyond int64 is an attack, and Python
# refuses to convert one of more than 4300 digits with a ValueError deep inside json.
MAX_INT_DIGITS = 19
# latent.scaling_factor is 1 / std of the autoencoder's latents (Rombach et al. 2022, Sec. G); published
# models use 0.13 (SDXL) to 1.5 (SD3), the shipped digits model 0.64. Outside 1e-3..1e3 it is a typo or a
# hostile edit, not a trained autoencoder, and 1e-30 or 1e30 push the decoder's input beyond float32 range.
SCALING_FACTOR_RANGE = (1e-3, 1e3)
# latent.shift_factor is the latents' mean (0.06 for SD3, 0.12 for FLUX); the same margin applies.
MAX_ABS_SHIFT_FACTOR = 1e3
# image.value_range is the decoder's output range: [-1, 1], [0, 1], or [0, 255] in practice.
MAX_ABS_VALUE_RANGE = 1e6
# Shapes: four times the largest latent/image side diffusion models sample at, channels far above any
# autoencoder's (4 to 128); a hand-edited 10**9 would otherwise allocate gigabytes at the first generate().
MAX_SIDE = 16384
MAX_LATENT_CHANNELS = 1024
IMAGE_CHANNELS = (1, 3)  # grey or RGB: what the runtime converts to and from PNG
MAX_CLASSES = 100_000  # ImageNet-21k has 21841 classes


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: a dimension is an int (fixed) or a str (a named dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelFile:
    role: str
    path: Path
    sha256: str
    opset: int
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: Path | None = None
    external_data_sha256: str | None = None
    kept_fp32: tuple[str, ...] = ()

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise BundleError(f"{self.path.name}: bundle.json declares no input named {name!r}")

    @property
    def main_input(self) -> TensorSpec:
        """The first input: the U-Net's noisy latents, the decoder's latents, the encoder's images."""
        return self.inputs[0]

    @property
    def output(self) -> TensorSpec:
        """The one output every role has (docs/bundle-format.md, "Graph contracts")."""
        return self.outputs[0]


@dataclass(frozen=True)
class UNetInputs:
    """The U-Net's inputs by the part they play, in bundle.json's documented order: the runtime feeds the
    names the bundle declares, never literals of its own."""

    sample: TensorSpec  # x_t, float [batch, C, h, w]
    timestep: TensorSpec  # one training timestep per row, int [batch]
    class_labels: TensorSpec | None  # one class per row, int [batch]; class-conditional U-Nets only


@dataclass(frozen=True)
class Conditioning:
    """Class conditioning. ``null_class`` is the label trained as "no class", used for guidance."""

    num_classes: int
    class_names: tuple[str, ...]
    null_class: int | None


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that names none gets; ``guidance_scale`` is 1.0 unless the bundle ``can_guide``
    (another value is refused at load), so callers use it as it is."""

    sampler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 1.0
    eta: float = 0.0


@dataclass(frozen=True)
class PrecisionGate:
    """The result of ``latent-ddpm validate-precision`` for one execution precision on one backend.

    ``models`` holds the sha256 of each graph the gate sampled: the record vouches for those graphs only.
    """

    precision: str
    backend: str
    passed: bool
    date: str
    models: Mapping[str, str]
    why: str | None  # the failed criteria, in words; None when passed
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class Bundle:
    root: Path
    name: str
    models: Mapping[str, ModelFile]
    latent_shape: tuple[int, int, int]
    scaling_factor: float
    shift_factor: float
    image_shape: tuple[int, int, int]
    value_range: tuple[float, float]
    prediction_type: str
    scheduler_config: Mapping[str, Any]
    conditioning: Conditioning | None
    defaults: SamplingDefaults
    validation: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False)
    precision_gates: Mapping[str, PrecisionGate] = field(default_factory=dict)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def has_encoder(self) -> bool:
        return "vae_encoder" in self.models

    @property
    def can_guide(self) -> bool:
        """Whether classifier-free guidance (Ho & Salimans 2022) is possible: a class-conditional U-Net
        trained with a null class, which stands for "no class" in the unconditional half of the batch."""
        return self.conditioning is not None and self.conditioning.null_class is not None

    @property
    def unet_inputs(self) -> UNetInputs:
        inputs = self.models["unet"].inputs
        return UNetInputs(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# The bundle.json keys that decide the images a bundle samples (graphs by sha256, latent and image layout,
# schedule, classes); its name, sampling defaults and validation records do not.
IMAGE_KEYS = ("models", "latent", "image", "prediction_type", "scheduler", "conditioning")


def bundle_hash(bundle: Bundle) -> str:
    """16 hex digits of sha256 over what decides the bundle's images: equal hashes, equal images from equal
    arguments on the same backend. Recorded in every sample PNG, checked by ``sample --from-png``."""
    what = {key: bundle.raw.get(key) for key in IMAGE_KEYS}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def load_bundle(path: str | Path, *, verify_hashes: bool = True) -> Bundle:
    """Read and check ``bundle.json`` and the files it names. Raises BundleError on the first problem."""
    root = Path(path).expanduser()
    if not _is_dir(root):
        raise BundleError(f"bundle directory not found: {root}")
    meta_path = root / BUNDLE_FILE
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: missing; is {root} a latent-ddpm bundle?")
    return parse_bundle(root.resolve(), read_bundle_json(meta_path), verify_hashes=verify_hashes)


def read_bundle_json(path: Path) -> dict[str, Any]:
    """The parsed object, or a BundleError for a file that is too big, not UTF-8, not JSON or nested too deeply."""
    size = path.stat().st_size
    if size > MAX_BUNDLE_JSON_BYTES:
        raise BundleError(f"{path}: {size} bytes; a bundle.json is a few kB (limit {MAX_BUNDLE_JSON_BYTES})")
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"), parse_int=_parse_int)
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 text (byte {exc.start}); is it a bundle.json?") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{path}: JSON nested too deeply to be a bundle.json") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object at the top level")
    return raw


def _parse_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise BundleError(
            f"{BUNDLE_FILE}: an integer of {len(digits)} digits ({text[:12]}...) is out of range"
        )
    return int(text)


def parse_bundle(root: Path, raw: Mapping[str, Any], *, verify_hashes: bool = True) -> Bundle:
    r = _Reader(raw, BUNDLE_FILE)
    if r.get("format", str) != FORMAT_NAME:
        raise BundleError(f"{BUNDLE_FILE}: 'format' is {raw.get('format')!r}, expected {FORMAT_NAME!r}")
    version = r.get("format_version", int)
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"{BUNDLE_FILE}: unknown format_version {version}; this latent-ddpm reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))} (upgrade latent-ddpm or re-export the bundle)"
        )

    models_raw = r.get("models", dict)
    unknown = sorted(set(models_raw) - set(REQUIRED_ROLES) - set(OPTIONAL_ROLES))
    if unknown:
        raise BundleError(f"{BUNDLE_FILE}: unknown model role(s) in 'models': {', '.join(unknown)}")
    models: dict[str, ModelFile] = {}
    for role in REQUIRED_ROLES + OPTIONAL_ROLES:
        if role not in models_raw:
            if role in REQUIRED_ROLES:
                raise BundleError(f"{BUNDLE_FILE}: 'models' has no {role!r} entry")
            continue
        models[role] = _parse_model(root, role, _Reader(models_raw[role], f"{BUNDLE_FILE}: models.{role}"))
        _check_arity(models[role], f"{BUNDLE_FILE}: models.{role}")

    latent = r.sub("latent")
    latent_shape = (
        latent.integer("channels", 1, MAX_LATENT_CHANNELS),
        latent.integer("height", 1, MAX_SIDE),
        latent.integer("width", 1, MAX_SIDE),
    )
    scaling_factor = latent.number("scaling_factor", *SCALING_FACTOR_RANGE, "1 / std of the latents")
    shift_factor = latent.number("shift_factor", -MAX_ABS_SHIFT_FACTOR, MAX_ABS_SHIFT_FACTOR, nullable=True)
    image = r.sub("image")
    image_shape = (
        image.get("channels", int),
        image.integer("height", 1, MAX_SIDE),
        image.integer("width", 1, MAX_SIDE),
    )
    if image_shape[0] not in IMAGE_CHANNELS:
        raise BundleError(f"{image.where}.channels must be 1 (grey) or 3 (RGB), got {image_shape[0]}")
    value_range = _value_range(image)

    prediction_type = r.get("prediction_type", str)
    if prediction_type not in PREDICTION_TYPES:
        raise BundleError(
            f"{BUNDLE_FILE}: prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}"
        )
    scheduler_config = dict(r.get("scheduler", dict))
    # The bundle's prediction_type is authoritative: it is what the exported U-Net outputs.
    scheduler_config["prediction_type"] = prediction_type

    conditioning = _parse_conditioning(r)
    defaults = _parse_defaults(r.sub("defaults", default={}), scheduler_config, conditioning)
    _check_samplers(scheduler_config, defaults)

    bundle = Bundle(
        root=root,
        name=r.get("name", str, default=root.name),
        models=models,
        latent_shape=latent_shape,
        scaling_factor=float(scaling_factor or 0.0),  # never None: not nullable, checked in range
        shift_factor=shift_factor or 0.0,
        image_shape=image_shape,
        value_range=(value_range[0], value_range[1]),
        prediction_type=prediction_type,
        scheduler_config=scheduler_config,
        conditioning=conditioning,
        defaults=defaults,
        validation=r.get("validation", dict, default={"validated": False}),
        raw=raw,
        precision_gates=_parse_precision_gates(r.sub("precision_gates", default={})),
    )
    _check_files(bundle, verify_hashes)
    return bundle


def _parse_model(root: Path, role: str, r: _Reader) -> ModelFile:
    path = _inside(root, r.get("file", str), r.where)
    external = r.get("external_data", (str, type(None)), default=None)
    external_sha = r.get("external_data_sha256", (str, type(None)), default=None)
    if external and external_sha is None:
        raise BundleError(f"{r.where}: 'external_data' {external!r} needs its 'external_data_sha256'")
    precision = r.get("precision", str)
    if precision not in PRECISIONS:
        raise BundleError(f"{r.where}.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    sha = r.get("sha256", str)
    for key, digest in (("sha256", sha), ("external_data_sha256", external_sha)):
        if digest is not None and not _is_sha256(digest):
            raise BundleError(f"{r.where}.{key}: not a lowercase hex sha256 digest: {digest!r}")
    return ModelFile(
        role=role,
        path=path,
        sha256=sha,
        opset=r.get("opset", int),
        precision=precision,
        inputs=tuple(_parse_tensor(t, f"{r.where}.inputs") for t in r.get("inputs", list)),
        outputs=tuple(_parse_tensor(t, f"{r.where}.outputs") for t in r.get("outputs", list)),
        external_data=_inside(root, external, r.where) if external else None,
        external_data_sha256=external_sha,
        kept_fp32=tuple(r.get("kept_fp32", list, default=[])),
    )


# inputs each role declares, in the order of docs/bundle-format.md ("Graph contracts")
_INPUTS = {"unet": "sample, timestep[, class_labels]", "vae_decoder": "latent", "vae_encoder": "image"}


def _check_arity(model: ModelFile, where: str) -> None:
    """The runtime knows an input by its place in the list (``UNetInputs``), so the count must fit the role."""
    counts = (2, 3) if model.role == "unet" else (1,)
    if len(model.inputs) not in counts or len(model.outputs) != 1:
        raise BundleError(
            f"{where}: declares {len(model.inputs)} inputs and {len(model.outputs)} outputs; a {model.role} "
            f"takes ({_INPUTS[model.role]}) and returns one output"
        )


def _parse_precision_gates(r: _Reader) -> dict[str, PrecisionGate]:
    gates = {}
    for precision in r.raw:
        if precision not in GATED_PRECISIONS:
            raise BundleError(
                f"{r.where}: unknown precision {precision!r}; gated precisions: {', '.join(GATED_PRECISIONS)}"
            )
        g = r.sub(precision)
        models = g.get("models", dict)
        for role, digest in models.items():
            if not _is_sha256(digest):
                raise BundleError(f"{g.where}.models.{role}: not a lowercase hex sha256 digest: {digest!r}")
        gates[precision] = PrecisionGate(
            precision=precision,
            backend=g.get("backend", str),
            passed=g.get("passed", bool),
            date=g.get("date", str),
            models=dict(models),
            why=g.get("why", (str, type(None)), default=None),
            summary=g.get("summary", dict, default={}),
        )
    return gates


def _is_sha256(digest: Any) -> bool:
    return isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def _parse_tensor(raw: Any, where: str) -> TensorSpec:
    t = _Reader(raw, where)
    name = t.get("name", str)
    dtype = t.get("dtype", str)
    if dtype not in TENSOR_DTYPES:
        raise BundleError(f"{where}: tensor {name!r} has unsupported dtype {dtype!r}")
    shape = t.get("shape", list)
    if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in shape):
        raise BundleError(f"{where}: tensor {name!r} shape must hold ints or axis names, got {shape}")
    return TensorSpec(name=name, dtype=dtype, shape=tuple(shape))


def _parse_conditioning(r: _Reader) -> Conditioning | None:
    raw = r.get("conditioning", (dict, type(None)), default=None)
    if raw is None:
        return None
    c = _Reader(raw, f"{BUNDLE_FILE}: conditioning")
    num_classes = c.integer("num_classes", 1, MAX_CLASSES)
    names = tuple(str(n) for n in c.get("class_names", list, default=[str(i) for i in range(num_classes)]))
    if len(names) != num_classes:
        raise BundleError(f"{c.where}.class_names has {len(names)} names for {num_classes} classes")
    null_class = c.get("null_class", (int, type(None)), default=None)
    if null_class is not None and not 0 <= null_class <= num_classes:
        raise BundleError(f"{c.where}.null_class {null_class} is outside 0..{num_classes}")
    return Conditioning(num_classes=num_classes, class_names=names, null_class=null_class)


def _parse_defaults(
    d: _Reader, scheduler_config: Mapping[str, Any], conditioning: Conditioning | None
) -> SamplingDefaults:
    unset = SamplingDefaults()  # a key bundle.json leaves out takes the dataclass's default
    out = SamplingDefaults(
        sampler=d.get("sampler", str, default=unset.sampler),
        steps=d.get("steps", int, default=unset.steps),
        guidance_scale=d.checked("guidance_scale", check_guidance_scale, default=unset.guidance_scale),
        eta=d.checked("eta", check_eta, default=unset.eta),
    )
    if out.sampler not in SAMPLERS:
        raise BundleError(f"{d.where}.sampler {out.sampler!r} is not one of {', '.join(SAMPLERS)}")
    max_steps = int(scheduler_config.get("num_train_timesteps", 1000))
    if not 1 <= out.steps <= max_steps:
        raise BundleError(f"{d.where}.steps {out.steps} is outside 1..{max_steps}")
    if out.guidance_scale != 1.0 and (conditioning is None or conditioning.null_class is None):
        raise BundleError(f"{d.where}.guidance_scale {out.guidance_scale} needs a class-conditional model")
    return out


def _value_range(image: _Reader) -> tuple[float, float]:
    raw = image.get("value_range", list, default=[-1.0, 1.0])
    ok = len(raw) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_ABS_VALUE_RANGE for v in raw
    )
    if not ok or not raw[0] < raw[1]:
        raise BundleError(
            f"{image.where}.value_range must be [low, high], finite numbers with |v| <= {MAX_ABS_VALUE_RANGE:g} "
            f"and low < high, got {raw!r}"
        )
    return float(raw[0]), float(raw[1])


def _check_samplers(scheduler_config: Mapping[str, Any], defaults: SamplingDefaults) -> None:
    """Build every sampler once from the scheduler config, as generate() would, so that a config none of them
    can sample with (betas >= 1 or 0, an unknown beta_schedule, a negative beta_start, ...) fails at load, and
    set the default sampler to the default steps."""
    for name in SAMPLERS:
        try:
            scheduler = make_scheduler(name, scheduler_config)
            if name == defaults.sampler:
                scheduler.set_timesteps(defaults.steps)
        except InputError as exc:
            raise BundleError(f"{BUNDLE_FILE}: scheduler: {exc}") from None


def _check_files(bundle: Bundle, verify_hashes: bool) -> None:
    expected = set(ALLOWED_EXTRA)
    for model in bundle.models.values():
        for p in (model.path, model.external_data):
            if p is None:
                continue
            if not p.is_file():
                raise BundleError(
                    f"{p.name}: missing from bundle {bundle.root} (named by models.{model.role})"
                )
            expected.add(p.relative_to(bundle.root).as_posix())
        if verify_hashes:
            for path, expected_sha in (
                (model.path, model.sha256),
                (model.external_data, model.external_data_sha256),
            ):
                if path is None or expected_sha is None:  # no external data file
                    continue
                actual = sha256_file(path)
                if actual != expected_sha:
                    raise BundleError(
                        f"{path.name}: sha256 mismatch (bundle.json says {expected_sha[:12]}..., file is "
                        f"{actual[:12]}...); the file is corrupted or was swapped: re-export the bundle"
                    )
    for p in sorted(bundle.root.rglob("*")):
        rel = p.relative_to(bundle.root)
        if rel.parts[0] == ENGINES_DIR or any(part.startswith(".") for part in rel.parts) or p.is_dir():
            continue
        if rel.as_posix() not in expected:
            raise BundleError(
                f"{rel.as_posix()}: unexpected file in bundle {bundle.root} (not named by bundle.json)"
            )


def _is_dir(path: Path) -> bool:
    """``Path.is_dir``, but a name the OS cannot take (a NUL byte, too long) is a BundleError naming it."""
    text = str(path)
    shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text)} characters)"
    if "\0" in text:
        raise BundleError(f"bundle path {shown} contains a NUL byte")
    try:
        return path.is_dir()
    except OSError as exc:  # ENAMETOOLONG: Python 3.11's is_dir only swallows "not found"
        raise BundleError(f"bundle path {shown}: {exc.strerror}") from None


def _inside(root: Path, rel: str, where: str) -> Path:
    if "\0" in rel or len(rel) > 1024 or any(len(part.encode()) > 255 for part in Path(rel).parts):
        raise BundleError(f"{where}: {rel[:60]!r}{'...' if len(rel) > 60 else ''} is not a valid file name")
    p = Path(rel)
    resolved = (root / p).resolve()
    if p.is_absolute() or not resolved.is_relative_to(root):
        raise BundleError(f"{where}: path {rel!r} leaves the bundle folder")
    return resolved


class _Reader:
    """Typed access to one JSON object, with errors that name the key and where it lives."""

    _MISSING = object()

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        self.raw, self.where = raw, where

    def get(self, key: str, types: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        if key not in self.raw:
            if default is self._MISSING:
                raise BundleError(f"{self.where}: missing key {key!r}")
            return default
        value = self.raw[key]
        types = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise BundleError(f"{self.where}: key {key!r} must be {names}, got {value!r}")
        return value

    def sub(self, key: str, default: Any = _MISSING) -> _Reader:
        return _Reader(self.get(key, dict, default=default), f"{self.where}.{key}")

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.get(key, int)
        if not low <= value <= high:
            raise BundleError(f"{self.where}.{key} must be in {low}..{high}, got {value}")
        return value

    def number(
        self, key: str, low: float, high: float, why: str = "", nullable: bool = False
    ) -> float | None:
        """A finite number in [low, high] (JSON's NaN and Infinity, which Python's json accepts, are not)."""
        if nullable:
            value = self.get(key, (int, float, type(None)), default=None)
            if value is None:
                return None
        else:
            value = self.get(key, (int, float))
        if not (math.isfinite(value) and low <= value <= high):
            what = f" ({why})" if why else ""
            raise BundleError(
                f"{self.where}.{key} must be a number in {low:g}..{high:g}{what}, got {value!r}"
            )
        return float(value)

    def checked(self, key: str, check: Any, default: Any) -> Any:
        """``check(value, name)`` from latent_ddpm.runtime.limits, its InputError reported as this file's."""
        value = self.get(key, (int, float), default=default)
        try:
            return check(value, f"{self.where}.{key}")
        except InputError as exc:
            raise BundleError(str(exc)) from None
