"""Measure a bundle's sample quality: conditional accuracy and classifier-space FID.

Generates --per-class images of every class and reads them with the judge of the data set the bundle draws
(a small CNN shipped with the package, trained on a fixed split of that data set: grey 32x32 digits '0'..'9'
or the 9 RGB emoji groups). Reports: the share read as the class asked for (overall and per class); the
Fréchet distance between the judge's features of the samples and of held-out real images ("cFID", lower is
better), next to the real-vs-real floor measured the same way; and seconds per image. Unconditional bundles
get the cFID only. --memorisation PNG also reports how many samples are closer to a training image than
training images are to each other, with a picture of the closest pairs. Sampling settings left out take the
bundle's defaults. For a sweep over samplers, steps and guidance see
`python -m latent_ddpm.evaluate.sweep --help`; to compare bundles, `python -m latent_ddpm.evaluate.compare`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latent_ddpm.runtime.schedulers import SAMPLERS

if TYPE_CHECKING:  # the evaluation modules load only when the command runs, so --help stays quick
    from latent_ddpm.evaluate.classifier import Judge
    from latent_ddpm.evaluate.measure import Evaluation

HELP = __doc__
WRITE_DEFAULTS_HELP = (
    "instead of measuring: write the recommended defaults of a finished sweep "
    "(python -m latent_ddpm.evaluate.sweep) into --bundle's bundle.json and README"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bundle",
        default=None,
        help="bundle directory, or a shipped model's name (default: the shipped digits model)",
    )
    p.add_argument("--per-class", type=int, default=100, help="images generated per class (>= 2)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: bundle's")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: bundle's)")
    p.add_argument(
        "--guidance",
        dest="guidance_scale",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: bundle's)",
    )
    p.add_argument("--eta", type=float, default=None, help="DDIM stochasticity (default: bundle's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    p.add_argument("--batch", type=int, default=100, help="images per generate call")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    p.add_argument(
        "--memorisation",
        type=Path,
        metavar="PNG",
        default=None,
        help="also check for copies of training images: the share of samples nearer to a training image than "
        "training images are to each other (with real held-out images' share beside it), and a picture "
        "of the closest pairs written to PNG",
    )
    p.add_argument("--write-defaults", type=Path, metavar="EVALUATION_JSON", help=WRITE_DEFAULTS_HELP)


def summary(report: Any) -> str:
    """The figures as a few human-readable lines."""
    r = report
    lines = [
        f"bundle: {r.bundle}",
        f"settings: sampler={r.sampler} steps={r.steps} guidance={r.guidance_scale:g} eta={r.eta:g} "
        f"seed={r.seed}",
        f"images: {r.num_images} in {r.total_seconds:.1f}s ({r.seconds_per_image:.3f} s/image)",
    ]
    if r.accuracy is not None:
        per = " ".join(f"{k}:{v:.0%}" for k, v in r.per_class_accuracy.items())
        lines.append(f"conditional accuracy: {r.accuracy:.2%}  ({per})")
    lines.append(
        f"classifier FID: {r.cfid:.3f} +- {r.cfid_std:.3f}  (real-vs-real floor {r.cfid_floor:.3f}: "
        f"{r.reference_images} held-out {r.judge} images vs {r.floor_images} others)"
    )
    if r.classifier_held_out_accuracy is not None:
        lines.append(f"{r.judge} judge's held-out accuracy: {r.classifier_held_out_accuracy:.2%}")
    return "\n".join(lines)


def memorisation_summary(doc: dict[str, Any]) -> str:
    """The memorisation figures: samples, real held-out images as the yardstick, both in judge features."""
    gen, real, feats = doc["generated"], doc["held_out_real"], doc["judge_features_share_below"]
    return (
        f"memorisation: {gen['share_below']:.1%} of {gen['num_generated']} samples lie nearer to one of the "
        f"{gen['num_training']} training images than the median training image to its nearest other "
        f"({gen['threshold']:.3f} RMS)\n"
        f"  real held-out images, judged the same way against the judge's training split: "
        f"{real['share_below']:.1%} (about half by construction; near 100% for the samples would mean copying)\n"
        f"  in the judge's features: {feats['generated']:.1%} of samples, {feats['held_out_real']:.1%} of real "
        "held-out images"
    )


def run(args: argparse.Namespace) -> int:
    from latent_ddpm.runtime.limits import check_threads

    check_threads(args.threads, "--threads")  # before any work: more threads than cores only contend
    if args.write_defaults is not None:
        from latent_ddpm.evaluate.defaults import write_defaults
        from latent_ddpm.runtime.shipped import resolve_bundle

        bundle = resolve_bundle(args.bundle)
        defaults = write_defaults(bundle, args.write_defaults)
        print(f"wrote defaults {json.dumps(asdict(defaults))} into {bundle}/bundle.json and README.md")
        return 0
    from latent_ddpm.evaluate.classifier import Judge
    from latent_ddpm.evaluate.measure import RealReference, Settings, check_settings, evaluate
    from latent_ddpm.files import atomic_write
    from latent_ddpm.provenance import environment
    from latent_ddpm.runtime.outputs import check_output_file
    from latent_ddpm.runtime.pipeline import Pipeline

    for path, flag, suffix in ((args.json, "--json", None), (args.memorisation, "--memorisation", ".png")):
        if path is not None:
            check_output_file(path, flag, suffix)
    pipe = Pipeline.from_bundle(args.bundle, threads=args.threads)
    # one flag per Settings field, each parsed into the field's name
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    judge = Judge(check_settings(pipe, settings), threads=args.threads)
    ev = evaluate(pipe, judge, RealReference(judge), settings, progress=not args.quiet)
    print(summary(ev.report))
    doc: dict[str, Any] = {"report": ev.report.to_json(), "environment": environment()}
    if args.memorisation is not None:
        doc["memorisation"] = check_memorisation(judge, ev, args.memorisation)
        print(memorisation_summary(doc["memorisation"]))
        print(f"wrote {args.memorisation}")
    if args.json is not None:
        atomic_write(args.json, json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def check_memorisation(judge: Judge, ev: Evaluation, picture: Path) -> dict[str, Any]:
    """Samples against the judge's whole data set (what the shipped models trained on), and its held-out
    real images against its training split as the yardstick, in pixels and in judge features; the closest
    pairs (in pixels) drawn into ``picture``."""
    import numpy as np

    from latent_ddpm.evaluate.judged import IMAGE_SIZE, pad_to
    from latent_ddpm.evaluate.memorisation import (
        closest_pairs_picture,
        memorisation,
        share_below_in_features,
    )
    from latent_ddpm.runtime.images import save_png

    data = judge.data
    images, labels = data.load()
    samples = pad_to(ev.images, IMAGE_SIZE, data.background)  # MNIST-sized 28 px samples, as judged
    generated = memorisation(samples, images, ev.asked, data.class_names)
    parts = data.split(labels)
    held = memorisation(images[parts.held_out], images[parts.train], labels[parts.held_out], data.class_names)
    save_png(np.asarray(closest_pairs_picture(samples, images, generated)), picture)
    features = judge.run(images)[1]
    in_features = {
        "generated": share_below_in_features(ev.features, features),
        "held_out_real": share_below_in_features(features[parts.held_out], features[parts.train]),
    }
    return {
        "data": data.describe,
        "generated": generated.to_json(),
        "held_out_real": held.to_json(),
        "judge_features_share_below": in_features,
    }
