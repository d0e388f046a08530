"""SRC (diffusers latent DDPM) -> OUT (validated bundle), all or nothing.

Everything is written into a temporary folder beside OUT and renamed into place only after the bundle has
loaded through the runtime and passed the validation gate; a failure at any point removes the temporary
folder and leaves an existing OUT untouched. OUT is checked before the source is even read: ``force``
replaces only an existing bundle (export/output.py, latent_ddpm/files.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.errors import LatentDDPMError
from latent_ddpm.evaluate.defaults import readme_line
from latent_ddpm.export.errors import ExportError, GateFailedError
from latent_ddpm.export.fp16 import Fp16Result, convert_fp16
from latent_ddpm.export.modules import graph_module
from latent_ddpm.export.onnx_export import EXTERNAL_DATA_THRESHOLD, MIN_OPSET, export_graph
from latent_ddpm.export.output import check_bundle_output, publish_bundle
from latent_ddpm.export.source import Source, load_source
from latent_ddpm.export.specs import ModelSpec, build_specs, validation_feeds
from latent_ddpm.export.validate import (
    GateSettings,
    now,
    settings_json,
    thresholds,
    validate_components,
    validate_default_sampling,
    validate_sampling,
    versions,
)
from latent_ddpm.runtime.bundle import (
    BUNDLE_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    VALIDATION_FILE,
    SamplingDefaults,
    load_bundle,
    sha256_file,
)
from latent_ddpm.runtime.progress import ProgressBar

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16")
VALUE_RANGE = [-1.0, 1.0]  # diffusers autoencoders decode to [-1, 1]; LDMPipeline maps it with x / 2 + 0.5


@dataclass
class ExportResult:
    path: Path
    bundle: dict[str, Any]
    report: dict[str, Any] | None
    seconds: float


@dataclass
class _Graph:
    spec: ModelSpec
    fp32_file: Path  # the float32 export, kept in the work folder for fallbacks
    result: Fp16Result = field(default_factory=lambda: Fp16Result("fp32"))


@dataclass(frozen=True)
class _Options:
    precision: str
    opset: int
    validate: bool
    name: str
    source_path: str  # the source relative to OUT: a bundle records no absolute path of the machine
    settings: GateSettings
    external_data_threshold: int
    threads: int | None


def export_bundle(
    src: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    opset: int = 17,
    validate: bool = True,
    force: bool = False,
    name: str | None = None,
    settings: GateSettings | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    threads: int | None = None,
    progress: bool = True,
) -> ExportResult:
    """Export SRC to a bundle at OUT. Raises ExportError (GateFailedError when validation fails).

    ``threads`` caps torch and ONNX Runtime intra-op threads (default: theirs, all cores); on a busy
    machine one or two threads can be many times faster than contended spinning threads.
    """
    started = time.perf_counter()
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; latent-ddpm exports opset {MIN_OPSET} or newer")
    src_path = Path(src).expanduser().resolve()
    out_path = check_bundle_output(out, force=force, sources=[src_path])
    options = _Options(
        precision,
        opset,
        validate,
        name or out_path.name,
        relative_source(src_path, out_path),
        settings or GateSettings(),
        external_data_threshold,
        threads,
    )
    stages = _Stages(progress, total=4 + (2 if validate else 0))
    try:
        with _torch_threads(threads):
            stages.next("reading source")
            source = load_source(src_path)
            _check_sampler(source)
            specs = _specs(source)
            _announce(source, specs, precision, stages)
            stages.add(len(specs) * (2 if precision == "fp16" else 1))
            meta, report = _write_bundle(source, specs, out_path, force, options, stages)
    except LatentDDPMError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:  # torch/onnx failures on a model we could read
        raise ExportError(
            f"export of {src_path} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from exc
    finally:
        stages.close()
    return ExportResult(out_path, meta, report, time.perf_counter() - started)


def relative_source(source: Path, out: Path) -> str:
    """SOURCE as a POSIX path relative to the bundle OUT (just its name where no relative path exists, as
    across Windows drives), so that a shipped bundle names no folder of the machine that exported it."""
    try:
        return Path(os.path.relpath(source, out)).as_posix()
    except ValueError:
        return source.name


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_bundle(
    source: Source, specs: dict[str, ModelSpec], out: Path, force: bool, options: _Options, stages: _Stages
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Build the bundle in a hidden folder beside OUT and swap it in; on any failure, remove it."""
    with publish_bundle(out, force=force, sources=[source.path]) as tmp:
        graphs = _export_graphs(source, specs, tmp, options, stages)
        if options.precision == "fp16":
            for role, graph in graphs.items():
                stages.next(f"converting {role} to fp16")
                rng = np.random.default_rng([options.settings.seed, 7])
                feeds = validation_feeds(graph.spec, options.settings.batch_sizes, rng)
                graph.result = convert_fp16(
                    tmp / graph.spec.file, feeds, options.external_data_threshold, graph.spec.fp32_scopes
                )
        meta = _bundle_json(source, graphs, tmp, options, {"validated": False})
        _write_json(tmp / BUNDLE_FILE, meta)
        stages.next("checking the bundle loads")
        load_bundle(tmp)
        report = None
        if options.validate:
            meta, report = _gate(source, graphs, tmp, meta, options, stages)
        stages.next("writing README.md")
        (tmp / "README.md").write_text(_readme(meta, report), encoding="utf-8")
        shutil.rmtree(tmp / ".work", ignore_errors=True)
        stages.next(f"publishing {out}")
    return meta, report


def _specs(source: Source) -> dict[str, ModelSpec]:
    cond = source.conditioning
    return build_specs(
        source.latent_shape,
        source.image_shape,
        num_train_timesteps=source.num_train_timesteps,
        num_class_embeds=cond.num_class_embeds if cond else None,
        null_class=cond.null_class if cond else None,
        scaling_factor=source.scaling_factor,
        shift_factor=source.shift_factor,
        with_encoder=source.has_encoder,
        vq_codebook=source.is_vq,
    )


# The torch modules whose weights each graph carries (a VQ decoder's codebook is in `quantize`).
_ROLE_WEIGHTS = {
    "unet": ("unet",),
    "vae_decoder": ("vae.decoder", "vae.post_quant_conv", "vae.quantize"),
    "vae_encoder": ("vae.encoder", "vae.quant_conv"),
}


def _announce(source: Source, specs: dict[str, ModelSpec], precision: str, stages: _Stages) -> None:
    """Say what the export will make before the minutes it may take: image size, parameters and the
    bundle's expected size, and warn when the images will not have the size the autoencoder was made for
    (diffusers' default AutoencoderKL does not downsample, whatever its sample_size says)."""
    params = {}
    for role in specs:
        modules = [_attribute(source, name) for name in _ROLE_WEIGHTS[role]]
        params[role] = sum(p.numel() for m in modules if m is not None for p in m.parameters())
    size_mb = sum(params.values()) * (2 if precision == "fp16" else 4) / 1e6
    c, h, w = source.image_shape
    latent, factor = source.latent_shape, h // source.latent_shape[1]
    stages.say(
        logging.INFO,
        f"{source.path}: {latent[0]}x{latent[1]}x{latent[2]} latents -> {c}x{h}x{w} images; "
        + ", ".join(f"{role} {n / 1e6:.2f}M parameters" for role, n in params.items())
        + f"; expected bundle about {size_mb:.1f} MB ({precision})",
    )
    declared = getattr(source.vae.config, "sample_size", None)
    if declared is None:
        return
    dh, dw = (declared, declared) if isinstance(declared, int) else tuple(declared)
    if (dh, dw) != (h, w):
        stages.say(
            logging.WARNING,
            f"the bundle will make {h}x{w} images, but {source.vae_folder}/config.json says sample_size "
            f"{declared}: the autoencoder upsamples latents {factor}x (block_out_channels has "
            f"{len(source.vae.config.block_out_channels)} entries) and unet/config.json's sample_size is "
            f"{latent[1]}x{latent[2]}; if the images should be {dh}x{dw}, one of the two configs is wrong",
        )


def _attribute(source: Source, dotted: str) -> Any:
    obj: Any = source
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _check_sampler(source: Source) -> None:
    """The runtime must be able to run this schedule with the default and the gate's samplers."""
    from latent_ddpm.runtime.schedulers import make_scheduler

    config = {**source.scheduler_config, "prediction_type": source.prediction_type}
    for sampler in {source.defaults["sampler"], "ddim"}:
        try:
            make_scheduler(sampler, config).set_timesteps(source.defaults["steps"])
        except (LatentDDPMError, ValueError, KeyError) as exc:
            raise ExportError(
                f"{source.path / 'scheduler' / 'scheduler_config.json'}: the runtime's {sampler} sampler cannot "
                f"use this schedule: {exc}"
            ) from None


def _export_graphs(
    source: Source, specs: dict[str, ModelSpec], tmp: Path, options: _Options, stages: _Stages
) -> dict[str, _Graph]:
    work = tmp / ".work"
    work.mkdir()
    graphs = {}
    for role, spec in specs.items():
        stages.next(f"exporting {role}")
        feed = spec.sample_feed(2, np.random.default_rng([options.settings.seed, 5]))
        export_graph(
            graph_module(role, source),
            spec,
            feed,
            work / spec.file,
            options.opset,
            options.external_data_threshold,
        )
        graphs[role] = _Graph(spec, work / spec.file)
        _copy_graph(work / spec.file, tmp / spec.file)
    return graphs


def _copy_graph(src: Path, dst: Path) -> None:
    for stale in (dst, dst.with_name(dst.name + ".data")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    if (data := src.with_name(src.name + ".data")).exists():
        shutil.copyfile(data, dst.with_name(data.name))


def _gate(
    source: Source,
    graphs: dict[str, _Graph],
    tmp: Path,
    meta: dict[str, Any],
    options: _Options,
    stages: _Stages,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate; for fp16, fall back graph by graph to fp32 until the gate passes or nothing is left."""
    from latent_ddpm.runtime.images import make_grid, save_png
    from latent_ddpm.runtime.pipeline import Pipeline

    precision, settings = options.precision, options.settings
    stages.add(1)  # the default-sampler run is a stage of its own
    while True:
        stages.next("validating graphs")
        pipe = Pipeline.from_bundle(tmp, threads=options.threads)
        precisions = {role: g.result.precision for role, g in graphs.items()}
        specs = {role: g.spec for role, g in graphs.items()}
        components = validate_components(pipe, source, specs, precisions, settings)
        stages.next("validating sampling against diffusers")
        sampling, images, reference = validate_sampling(pipe, source, precision, settings)
        d = pipe.bundle.defaults
        stages.next(f"validating the default sampler ({d.sampler}, {d.steps} steps)")
        runs = {
            "sampling": sampling,
            "sampling_default": validate_default_sampling(pipe, source, precision, settings),
        }
        del pipe
        fallback = _fallback(graphs, components, runs)
        if precision == "fp32" or fallback is None:
            break
        role, why = fallback
        _copy_graph(graphs[role].fp32_file, tmp / graphs[role].spec.file)
        graphs[role].result = Fp16Result("fp32", [f"whole graph: {why}"])
        meta = _bundle_json(source, graphs, tmp, options, {"validated": False})
        _write_json(tmp / BUNDLE_FILE, meta)
        stages.add(3)

    passed = all(run["passed"] for run in runs.values()) and all(c["passed"] for c in components.values())
    report = {
        "passed": passed,
        "precision": precision,
        "date": now(),
        "versions": versions(),
        "thresholds": thresholds(),
        "settings": settings_json(settings),
        **runs,
        "components": components,
        "kept_fp32": {role: g.result.kept_fp32 for role, g in graphs.items()},
    }
    summary = {
        "precision": precision,
        "date": report["date"],
        "versions": report["versions"],
        "thresholds": report["thresholds"],
        "sampling": {
            k: sampling[k] for k in ("images", "steps", "guidance_scale", "max_abs_diff", "psnr_db")
        },
        "sampling_default": {
            k: runs["sampling_default"][k]
            for k in ("sampler", "images", "steps", "eta", "guidance_scale", "max_abs_diff", "psnr_db")
        },
        "components": {role: {"precision": c["precision"], **c["worst"]} for role, c in components.items()},
    }
    meta["validation"] = {"validated": True, "passed": passed, "report": VALIDATION_FILE, "summary": summary}
    if not passed:
        raise GateFailedError(_failure_message(components, runs, precision), report)
    _write_json(tmp / VALIDATION_FILE, report)
    _write_json(tmp / BUNDLE_FILE, meta)
    save_png(make_grid(np.concatenate([images, reference]), nrow=len(images)), tmp / "samples.png")
    return meta, report


def _fallback(
    graphs: dict[str, _Graph], components: dict[str, Any], runs: dict[str, dict[str, Any]]
) -> tuple[str, str] | None:
    """The next reduced-precision graph to put back in fp32, and why; None when there is nothing to do."""
    reduced = [role for role, g in graphs.items() if g.result.precision != "fp32"]
    for role in reduced:
        if not components[role]["passed"]:
            return role, f"float16 fails the per-graph check (cosine {components[role]['worst']['cosine']})"
    failed = [run for run in runs.values() if not run["passed"]]
    if not failed:
        return None
    sampled = [role for role in reduced if role != "vae_encoder"]
    if not sampled:
        return None
    role = min(sampled, key=lambda r: components[r]["worst"]["cosine"] or 0.0)
    if any(run["nonfinite"] for run in failed):
        return role, "with it in float16 sampling returned NaN/Inf"
    psnr = min(run["psnr_db"] for run in failed)
    return role, f"with it in float16 the images reach only {psnr:.1f} dB PSNR"


def _failure_message(components: dict[str, Any], runs: dict[str, dict[str, Any]], precision: str) -> str:
    problems = []
    for name, sampling in runs.items():
        run = (
            ""
            if name == "sampling"
            else f"at the default sampler ({sampling['sampler']}, {sampling['steps']} steps) "
        )
        if sampling["nonfinite"]:
            problems.append(f"sampling {run}returned {sampling['nonfinite']} NaN/Inf values")
        elif not sampling["passed"]:
            if precision == "fp32":
                problems.append(
                    f"images {run}differ from diffusers by up to {sampling['max_abs_diff']}/255 (fp32 allows 2/255)"
                )
            else:
                problems.append(
                    f"images {run}reach only {sampling['psnr_db']:.1f} dB PSNR against diffusers (fp16 needs 35)"
                )
    for role, comp in components.items():
        if not comp["passed"]:
            w = comp["worst"]
            problems.append(
                f"{role}: {w['nonfinite']} NaN/Inf values"
                if w["nonfinite"]
                else f"{role}: cosine {w['cosine']:.6f} "
                f"< {comp['min_cosine']} (max abs error {w['max_abs']:.3g})"
            )
    return "validation failed, nothing was written: " + "; ".join(problems)


def _bundle_json(
    source: Source, graphs: dict[str, _Graph], tmp: Path, options: _Options, validation: dict[str, Any]
) -> dict[str, Any]:
    import torch

    from latent_ddpm import __version__

    cond = source.conditioning
    c, h, w = source.latent_shape
    ci, hi, wi = source.image_shape
    models = {}
    for role, graph in graphs.items():
        external = tmp / (graph.spec.file + ".data")
        models[role] = {
            "file": graph.spec.file,
            "sha256": sha256_file(tmp / graph.spec.file),
            "opset": options.opset,
            "precision": graph.result.precision,
            "kept_fp32": graph.result.kept_fp32,
            "external_data": external.name if external.exists() else None,
            "external_data_sha256": sha256_file(external) if external.exists() else None,
            **graph.spec.to_json(),
        }
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": options.name,
        "created_by": f"latent-ddpm {__version__}",
        "source": {
            "name": source.path.name,
            "path": options.source_path,
            "unet_class": source.unet_class,
            "vae_class": source.vae_class,
            "vae_folder": source.vae_folder,
            "exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}",
            "recipe": (source.metadata or {}).get("recipe"),
        },
        "models": models,
        "latent": {
            "channels": c,
            "height": h,
            "width": w,
            "scaling_factor": source.scaling_factor,
            "shift_factor": source.shift_factor,
        },
        "image": {"channels": ci, "height": hi, "width": wi, "value_range": VALUE_RANGE},
        "prediction_type": source.prediction_type,
        "scheduler": source.scheduler_config,
        "conditioning": None
        if cond is None
        else {
            "num_classes": len(cond.class_names),
            "class_names": list(cond.class_names),
            "null_class": cond.null_class,
        },
        "defaults": source.defaults,
        "validation": validation,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _readme(meta: dict[str, Any], report: dict[str, Any] | None) -> str:
    src = meta["source"]
    lines = [
        f"# {meta['name']}",
        "",
        f"A latent-ddpm bundle ({meta['created_by']}) exported from `{src['name']}` "
        f"({src['unet_class']} + {src['vae_class']}). `bundle.json` holds the whole contract.",
        "",
        "    latent-ddpm sample --bundle . --out samples.png",
        "",
        "| graph | precision | kept in float32 |",
        "|---|---|---|",
    ]
    for m in meta["models"].values():
        lines.append(f"| {m['file']} | {m['precision']} | {len(m['kept_fp32'])} |")
    lines.append("")
    if report is None:
        lines.append("Not validated (exported with --no-validate).")
    else:
        s = report["sampling"]
        psnr = "identical" if s["psnr_db"] is None else f"{s['psnr_db']:.1f} dB"
        lines += [
            f"Validated {report['date']}: {s['images']} images, DDIM {s['steps']} steps, guidance "
            f"{s['guidance_scale']:g}, against diffusers from the same latents: max difference "
            f"{s['max_abs_diff']}/255, PSNR {psnr}; at the bundle's default sampler "
            f"({_run_phrase(report['sampling_default'])}). Figures: `validation.json`.",
            "",
            "`samples.png`: top row this bundle (ONNX Runtime), bottom row the diffusers reference.",
        ]
    lines += ["", readme_line(SamplingDefaults(**meta["defaults"]))]
    return "\n".join(lines) + "\n"


def _run_phrase(run: dict[str, Any]) -> str:
    psnr = "identical" if run["psnr_db"] is None else f"PSNR {run['psnr_db']:.1f} dB"
    return f"{run['sampler']} {run['steps']} steps: max difference {run['max_abs_diff']}/255, {psnr}"


class _Stages:
    """A progress bar over the export's stages, one tick each, named after the stage under way."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = ProgressBar(total=total, disable=not enabled, width=20)
        self.started = False

    def next(self, description: str) -> None:
        self.bar.set_description(f"{description:<42}")
        self.bar.update(1 if self.started else 0)
        self.started = True

    def add(self, n: int) -> None:
        self.bar.total += n

    def say(self, level: int, message: str) -> None:
        """Log ``message`` on a line of its own (not into the terminal's bar line)."""
        self.bar.clear()
        log.log(level, message)

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()
