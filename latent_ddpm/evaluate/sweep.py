"""The seed document's exercises on one bundle, measured: samplers and step counts, guidance scale.

    nice -n 10 python -m latent_ddpm.evaluate.sweep --bundle runs/digits/bundle

The bundle (default: the shipped one) gets the guidance sweep (DDIM 50, eta 0 and 1) and then, at the
chosen scale and eta, the sampler sweep (DDIM 10/20/50/100, DPM-Solver++ 10/20, DDPM 1000 on fewer
images, plus DDIM 50 on as many so the two compare fairly). Bundles are compared with each other by
``python -m latent_ddpm.evaluate.compare``. Results go to OUT/evaluation.json, tables to OUT/evaluation.md (between the sweep markers) and plots to
OUT/images/eval_*.png. Finished rows are kept in the JSON and reused on a rerun with the same settings, so
an interrupted sweep resumes and the report can be redrawn without sampling again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from latent_ddpm.errors import LatentDDPMError
from latent_ddpm.evaluate.calibrate import calibration
from latent_ddpm.evaluate.classifier import Judge
from latent_ddpm.evaluate.defaults import bundle_identity
from latent_ddpm.evaluate.judged import JudgedData
from latent_ddpm.evaluate.measure import RealReference, Settings, check_settings, evaluate
from latent_ddpm.evaluate.recommend import CFID_TOLERANCE, pick_guidance, pick_steps
from latent_ddpm.evaluate.report import write_report
from latent_ddpm.files import atomic_write
from latent_ddpm.provenance import environment, portable_path
from latent_ddpm.runtime.pipeline import Pipeline

DDIM_STEPS = (10, 20, 50, 100)
DPM_STEPS = (10, 20)
GUIDANCE = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
ETAS = (0.0, 1.0)  # deterministic DDIM, and DDIM with DDPM's amount of fresh noise per step
REFERENCE_STEPS = 50  # the setting the goals name: DDIM 50


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


class Sweep:
    """Runs and caches rows; one classifier and one real reference for all of them."""

    def __init__(self, args: argparse.Namespace, data: JudgedData) -> None:
        self.args = args
        self.path = args.out / "evaluation.json"
        old = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.cache: dict[str, dict[str, Any]] = {r["key"]: r for r in old.get("rows", [])}
        self.rows: dict[str, dict[str, Any]] = {}
        self.classifier = Judge(data, threads=args.threads)
        self.reference = RealReference(self.classifier)

    def row(self, pipe: Any, label: str, per_class: int, **sampling: Any) -> dict[str, Any]:
        s = Settings(per_class=per_class, seed=self.args.seed, batch=self.args.batch, **sampling)
        # what fixes the images (not the batch size: image k is seeded seed + k in any batch)
        key = f"{bundle_identity(pipe.bundle)}|{s.sampler}|{s.steps}|{s.guidance_scale}|{s.eta}|{s.per_class}|seed{s.seed}+k"
        if key in self.cache:  # the same model and settings: relabel only (e.g. the bundle was copied)
            row = {**self.cache[key], "label": label, "bundle": portable_path(pipe.bundle.root)}
        else:
            print(
                f"[{label}] {s.sampler} {s.steps} steps, guidance {s.guidance_scale}, {per_class}/class",
                flush=True,
            )
            report = evaluate(pipe, self.classifier, self.reference, s, progress=not self.args.quiet).report
            row = {"key": key, "label": label, "schedule": schedule_of(pipe), **report.to_json()}
            print(
                f"  accuracy={row['accuracy']} cfid={row['cfid']:.3f} floor={row['cfid_floor']:.3f} "
                f"s/image={row['seconds_per_image']:.4f}",
                flush=True,
            )
        self.rows[key] = self.cache[key] = row
        self.save({}, final=False)
        return row

    def save(self, extra: dict[str, Any], final: bool = True) -> None:
        """While running keep every row (to resume); at the end only this sweep's rows."""
        doc = {
            "environment": environment(),
            "judge": self.classifier.data.name,
            "classifier": {
                k: self.classifier.meta.get(k) for k in ("held_out_accuracy", "split", "training")
            },
            **extra,
            "rows": list((self.rows if final else self.cache).values()),
        }
        atomic_write(self.path, json.dumps(doc, indent=2) + "\n")


def schedule_of(pipe: Any) -> str:
    return str(pipe.bundle.scheduler_config.get("beta_schedule", "?"))


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    main = Pipeline.from_bundle(args.bundle, threads=args.threads)
    # refuse bad input before the first minute of sampling
    data = check_settings(
        main, Settings(per_class=min(args.per_class, args.ddpm_per_class), batch=args.batch)
    )
    label = f"{main.bundle.name} ({schedule_of(main)})"
    sweep = Sweep(args, data)
    can_guide = main.bundle.can_guide
    guidance_rows = [
        sweep.row(
            main, label, args.per_class, sampler="ddim", steps=REFERENCE_STEPS, guidance_scale=g, eta=eta
        )
        for eta in args.etas
        for g in (args.guidance if can_guide else (1.0,))
    ]
    reference = pick_guidance(
        guidance_rows, data.accuracy_goal
    )  # DDIM 50 at the chosen scale and eta: the row the goals name
    best_g, best_eta = reference["guidance_scale"], reference["eta"]
    ddim = {"sampler": "ddim", "eta": best_eta}
    at_g = {"guidance_scale": best_g}
    step_rows = [
        sweep.row(main, label, args.per_class, steps=n, **ddim, **at_g)
        for n in sorted({*args.ddim_steps, REFERENCE_STEPS})
    ]
    step_rows += [
        sweep.row(main, label, args.per_class, sampler="dpmsolver++", steps=n, **at_g) for n in args.dpm_steps
    ]
    ddpm = sweep.row(main, label, args.ddpm_per_class, sampler="ddpm", steps=args.ddpm_steps, **at_g)
    ddim_matched = sweep.row(main, label, args.ddpm_per_class, steps=REFERENCE_STEPS, **ddim, **at_g)
    chosen = pick_steps(step_rows)
    defaults = {
        "sampler": chosen["sampler"],
        "steps": chosen["steps"],
        "guidance_scale": best_g,
        "eta": chosen["eta"],
    }
    goals = {
        "accuracy_ddim50": {
            "value": reference["accuracy"],
            "target": data.accuracy_goal,
            "met": reference["accuracy"] is not None and reference["accuracy"] >= data.accuracy_goal,
        },
        "cfid_ddim50_vs_ddpm": {
            "ddim50": ddim_matched["cfid"],
            "ddpm": ddpm["cfid"],
            "ddpm_steps": ddpm["steps"],
            "images_each": ddpm["num_images"],
            "tolerance": CFID_TOLERANCE,
            "met": ddim_matched["cfid"] <= (1 + CFID_TOLERANCE) * ddpm["cfid"],
        },
    }
    samples = evaluate(
        main,
        sweep.classifier,
        sweep.reference,
        Settings(per_class=10, seed=args.seed, batch=args.batch, **defaults),
        progress=not args.quiet,
    )
    extra = {
        "calibration": calibration(sweep.classifier, sweep.reference, args.per_class),
        "tables": {
            "guidance": [r["key"] for r in guidance_rows],
            "steps": [r["key"] for r in [*step_rows, ddpm, ddim_matched]],
        },
        "recommended_defaults": defaults,
        "recommended_row": chosen["key"],
        "reference_row": reference["key"],  # DDIM 50 at the chosen guidance and eta
        "goals": goals,
    }
    sweep.save(extra)
    doc = json.loads(sweep.path.read_text(encoding="utf-8"))
    write_report(doc, args.out, samples)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m latent_ddpm.evaluate.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="bundle directory (default: the shipped one); to compare bundles use evaluate.compare",
    )
    p.add_argument(
        "--out", type=Path, default=Path("docs"), help="folder for evaluation.{json,md} and images/"
    )
    p.add_argument("--per-class", type=int, default=100, help="images per class for the main rows")
    p.add_argument("--ddpm-per-class", type=int, default=20, help="images per class for the DDPM row")
    p.add_argument("--ddpm-steps", type=int, default=1000)
    p.add_argument("--ddim-steps", type=_ints, default=DDIM_STEPS, help="comma-separated")
    p.add_argument("--dpm-steps", type=_ints, default=DPM_STEPS, help="comma-separated, DPM-Solver++")
    p.add_argument("--guidance", type=_floats, default=GUIDANCE, help="comma-separated guidance scales")
    p.add_argument(
        "--etas", type=_floats, default=ETAS, help="comma-separated DDIM etas for the guidance sweep"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        doc = run_sweep(args)
    except LatentDDPMError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    print(f"recommended defaults: {json.dumps(doc['recommended_defaults'])}")
    bundle = args.bundle or "the shipped digits model"
    print(f"write them into {bundle}: latent-ddpm eval --write-defaults {args.out / 'evaluation.json'}")
    for name, goal in doc["goals"].items():
        print(f"goal {name}: {'met' if goal['met'] else 'NOT met'} ({goal})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
