"""Bundles side by side at the same settings: quality (accuracy, cFID), speed (images/s), size (parameters, MB).

    nice -n 10 python -m latent_ddpm.evaluate.compare --bundle linear=runs/linear/bundle \\
        --bundle cosine=runs/cosine/bundle --section schedules --out docs

Every bundle is sampled with the same sampler, steps, guidance (default: DDIM 50 at the first bundle's
guidance), seeds and image count, and judged by measure.evaluate. Speed is Pipeline.generate at one batch
size, timed in interleaved rounds (A B C A B C ...) in this process; the median per bundle is reported with
its ratio to the first bundle and the load average before and after. Results go to OUT/compare_NAME.json, a
table to OUT/evaluation.md between the compare:NAME markers and a trade-off plot to
OUT/images/compare_NAME.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError, LatentDDPMError
from latent_ddpm.evaluate.classifier import Judge
from latent_ddpm.evaluate.measure import RealReference, Settings, check_settings, class_names, evaluate
from latent_ddpm.evaluate.sweep import REFERENCE_STEPS, schedule_of
from latent_ddpm.extras import require_extra
from latent_ddpm.files import atomic_write
from latent_ddpm.provenance import environment
from latent_ddpm.runtime.pipeline import Pipeline

SECTION = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_bundles(specs: list[str]) -> list[tuple[str, Path]]:
    """LABEL=DIR pairs, labels unique, directories present: refused in one line before any loading."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        label, sep, folder = spec.partition("=")
        if not sep or not label or not folder:
            raise InputError(f"--bundle must be LABEL=DIR, got {spec!r}")
        if label in (lab for lab, _ in out):
            raise InputError(f"duplicate bundle label {label!r}")
        if not Path(folder).is_dir():
            raise InputError(f"bundle directory not found: {folder}")
        out.append((label, Path(folder)))
    if len(out) < 2:
        raise InputError("give at least two --bundle LABEL=DIR to compare")
    return out


def unet_parameters(path: Path) -> int:
    """Element count of the U-Net graph's initializers (its weights); external data is not read."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer)


def disk_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def check_alike(pipes: list[Pipeline], labels: list[str]) -> None:
    """Bundles judged against each other must make the same images of the same classes."""
    first = pipes[0].bundle
    names = class_names(pipes[0])
    for pipe, label in zip(pipes[1:], labels[1:], strict=True):
        b = pipe.bundle
        if b.image_shape != first.image_shape:
            raise InputError(
                f"{label}: image shape {b.image_shape} differs from {labels[0]}'s {first.image_shape}"
            )
        if class_names(pipe) != names:
            raise InputError(f"{label}: classes differ from {labels[0]}'s")


def time_rounds(
    pipes: list[Pipeline], batch: int, sampling: dict[str, Any], rounds: int
) -> list[list[float]]:
    """images/s of each bundle per round, bundles interleaved so that drifting load hits all alike."""
    speeds: list[list[float]] = [[] for _ in pipes]
    for pipe in pipes:  # warm-up: sessions and arenas allocated before the clock runs
        pipe.generate(num_images=batch, seed=0, **sampling)
    for r in range(rounds):
        for k, pipe in enumerate(pipes):
            start = time.perf_counter()
            pipe.generate(num_images=batch, seed=r, **sampling)
            speeds[k].append(batch / (time.perf_counter() - start))
    return speeds


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    if not SECTION.match(args.section):
        raise InputError(f"--section must be letters, digits, _ or -, got {args.section!r}")
    if args.timing_rounds < 1 or args.timing_batch < 1:
        raise InputError("--timing-rounds and --timing-batch must be >= 1")
    specs = parse_bundles(args.bundle)
    require_extra("evaluate.compare", "export", ["onnx"])  # parameters are counted from the U-Net graph
    labels = [lab for lab, _ in specs]
    pipes = [Pipeline.from_bundle(d, threads=args.threads) for _, d in specs]
    check_alike(pipes, labels)
    first = pipes[0].bundle.defaults
    settings = Settings(
        per_class=args.per_class,
        sampler=args.sampler or "ddim",
        steps=args.steps if args.steps is not None else REFERENCE_STEPS,
        guidance_scale=args.guidance if args.guidance is not None else first.guidance_scale,
        eta=args.eta if args.eta is not None else first.eta,
        seed=args.seed,
        batch=args.batch,
    )
    sampling = {
        "sampler": settings.sampler,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "eta": settings.eta,
    }
    for pipe in pipes:  # every setting checked on every bundle before the first image
        data = check_settings(pipe, settings)
        pipe.requests.generate(num_images=settings.batch, **sampling)
    sizes = [
        {"unet_parameters": unet_parameters(p.bundle.models["unet"].path), "bundle_mb": disk_mb(d)}
        for p, (_, d) in zip(pipes, specs, strict=True)
    ]
    classifier = Judge(data, threads=args.threads)  # alike bundles: one data set
    reference = RealReference(classifier)
    rows = []
    for label, size, pipe in zip(labels, sizes, pipes, strict=True):
        print(f"[{label}] quality: {settings}", flush=True)
        report = evaluate(pipe, classifier, reference, settings, progress=not args.quiet).report
        rows.append(
            {
                "label": label,
                "schedule": schedule_of(pipe),
                "prediction_type": pipe.bundle.prediction_type,
                **size,
                **report.to_json(),
            }
        )
    load_before = os.getloadavg()
    speeds = time_rounds(pipes, args.timing_batch, sampling, args.timing_rounds)
    load_after = os.getloadavg()
    base = statistics.median(speeds[0])
    for row, s in zip(rows, speeds, strict=True):
        row["images_per_s_rounds"] = s
        row["images_per_s"] = statistics.median(s)
        row["speed_ratio"] = row["images_per_s"] / base
    return {
        "section": args.section,
        "environment": environment(),
        "settings": {
            **sampling,
            "per_class": settings.per_class,
            "seed": settings.seed,
            "batch": settings.batch,
        },
        "timing": {
            "batch": args.timing_batch,
            "rounds": args.timing_rounds,
            "order": "interleaved",
            "loadavg_before": list(load_before),
            "loadavg_after": list(load_after),
            "cpu_count": os.cpu_count(),
        },
        "classifier_held_out_accuracy": classifier.held_out_accuracy,
        "rows": rows,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(doc: dict[str, Any], image: str) -> str:
    s, t = doc["settings"], doc["timing"]
    head = (
        f"### Compared: {doc['section']} ({s['sampler']} {s['steps']}, eta {s['eta']:g}, guidance "
        f"{s['guidance_scale']:g}, {s['per_class']}/class, seed {s['seed']})\n\n"
        "| bundle | schedule | prediction | parameters | MB | accuracy | cFID ± std | floor | images/s | speed |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['label']} | {r['schedule']} | {r['prediction_type']} | {r['unet_parameters']:,} | "
        f"{r['bundle_mb']:.2f} | {_pct(r['accuracy'])} | "
        f"{r['cfid']:.2f} ± {r['cfid_std']:.2f} | {r['cfid_floor']:.2f} | {r['images_per_s']:.2f} | "
        f"{r['speed_ratio']:.2f}x |"
        for r in doc["rows"]
    ]
    load = ", ".join(
        f"{a:.2f} -> {b:.2f}" for a, b in zip(t["loadavg_before"], t["loadavg_after"], strict=True)
    )
    foot = (
        f"\nSpeed: median of {t['rounds']} interleaved rounds of batch {t['batch']} in one process, ratio to "
        f"the first bundle; load average (1/5/15 min) {load} on {t['cpu_count']} CPUs.\n\n"
        f"![{doc['section']} trade-off]({image})"
    )
    return head + "\n".join(lines) + "\n" + foot


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    speed = [r["images_per_s"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=120)
    for ax, key, name in (
        (axes[0], "cfid", "classifier FID (lower is better)"),
        (axes[1], "accuracy", "accuracy (%)"),
    ):
        ys = [r["cfid"] if key == "cfid" else 100 * (r["accuracy"] or 0) for r in rows]
        if key == "cfid":
            ax.errorbar(speed, ys, yerr=[r["cfid_std"] for r in rows], fmt="o", capsize=3)
        else:
            ax.plot(speed, ys, "o")
        for r, x, y in zip(rows, speed, ys, strict=True):
            ax.annotate(
                f"{r['label']}\n{r['unet_parameters']:,} params",
                (x, y),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_xlabel("images / s")
        ax.set_ylabel(name)
    fig.suptitle(f"{doc['section']}: quality vs speed")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_section(md: Path, name: str, body: str) -> None:
    """Replace the text between this section's markers, or append them; nothing else in the file changes."""
    begin, end = f"<!-- compare:{name}:begin -->", f"<!-- compare:{name}:end -->"
    text = md.read_text(encoding="utf-8") if md.is_file() else "# Evaluation\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text + ("" if text.endswith("\n") else "\n") + "\n" + block + "\n"
    atomic_write(md, text)


def write_outputs(doc: dict[str, Any], out: Path) -> None:
    name = doc["section"]
    atomic_write(out / f"compare_{name}.json", json.dumps(doc, indent=2) + "\n")
    plot(doc, out / "images" / f"compare_{name}.png")
    write_section(out / "evaluation.md", name, markdown(doc, f"images/compare_{name}.png"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m latent_ddpm.evaluate.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", action="append", default=[], help="LABEL=DIR; repeat (first = reference)")
    p.add_argument("--section", required=True, help="name of the comparison (file names and markers)")
    p.add_argument(
        "--out", type=Path, default=Path("docs"), help="folder for evaluation.md, compare_NAME.json, images/"
    )
    p.add_argument("--per-class", type=int, default=100, help="images per class for quality")
    p.add_argument("--sampler", default=None, help="default: ddim")
    p.add_argument("--steps", type=int, default=None, help=f"default: {REFERENCE_STEPS}")
    p.add_argument("--guidance", type=float, default=None, help="default: the first bundle's")
    p.add_argument("--eta", type=float, default=None, help="default: the first bundle's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100, help="batch size for quality sampling")
    p.add_argument("--timing-batch", type=int, default=10, help="images per timed generate call")
    p.add_argument("--timing-rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        doc = run_compare(args)
    except LatentDDPMError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    write_outputs(doc, args.out)
    for r in doc["rows"]:
        print(
            f"{r['label']}: accuracy={r['accuracy']} cfid={r['cfid']:.3f} images/s={r['images_per_s']:.2f} ({r['speed_ratio']:.2f}x) params={r['unet_parameters']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
