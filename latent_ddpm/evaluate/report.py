"""The sweep's figures as Markdown tables and matplotlib plots, written into docs/evaluation.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.evaluate.measure import Evaluation

BEGIN, END = "<!-- sweep:begin -->", "<!-- sweep:end -->"
SAMPLER_NAMES = {"ddim": "DDIM", "ddpm": "DDPM", "dpmsolver++": "DPM-Solver++"}


def _quality(r: dict[str, Any]) -> list[str]:
    """The cells every table has: images, accuracy, cFID and its floor."""
    return [str(r["num_images"]), _acc(r["accuracy"]), _fid(r), f"{r['cfid_floor']:.2f}"]


def _acc(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def _secs(v: float) -> str:
    return f"{v:.3g}"


def _speedup(v: float) -> str:
    return f"{v:.1f}x" if v < 10 else f"{v:.0f}x"


def unet_calls(r: dict[str, Any]) -> int:
    """Images' worth of U-Net work per image: guidance runs a conditional and an unconditional half."""
    return r["steps"] * (2 if r["conditional"] and r["guidance_scale"] != 1.0 else 1)


def _fid(r: dict[str, Any]) -> str:
    return f"{r['cfid']:.2f} ± {r['cfid_std']:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(doc: dict[str, Any], image_dir: str) -> str:
    rows = {r["key"]: r for r in doc["rows"]}
    t = {k: [rows[key] for key in keys] for k, keys in doc["tables"].items()}
    env, rec, goals = doc["environment"], doc["recommended_defaults"], doc["goals"]
    judge = doc["judge"]
    ddpm = next(r for r in t["steps"] if r["sampler"] == "ddpm")
    ref_eta = next(r["eta"] for r in t["steps"] if r["sampler"] == "ddim")
    main = t["steps"][0]
    out = [
        f"Measured {env['date'][:10]} on {env['machine']['cpu']} ({env['machine']['cores']} cores, shared with "
        f"other jobs, so times are indicative), "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f". Main bundle: `{main['label']}`; seed {main['seed']} (image k uses seed + k), batch {main['batch']}"
        + f". {judge.capitalize()} judge's held-out accuracy: {_acc(doc['classifier']['held_out_accuracy'])}.",
        "",
        "### What the numbers mean",
        "",
        f"The same figures for real {judge} and known degradations of them (no sampling):",
        "",
        _table(
            ["images", "count", "accuracy", "cFID", "floor"],
            [
                [
                    c["name"],
                    str(c["num_images"]),
                    _acc(c["accuracy"]),
                    f"{c['cfid']:.2f}",
                    f"{c['cfid_floor']:.2f}",
                ]
                for c in doc["calibration"]
            ],
        ),
        "",
        "### Guidance scale and DDIM eta (DDIM 50 steps)",
        "",
        "eta 0 is deterministic DDIM; eta 1 adds fresh noise at every step as DDPM does.",
        "",
        _table(
            ["guidance", "eta", "images", "accuracy", "cFID", "floor", "s / image"],
            [
                [
                    f"{r['guidance_scale']:g}",
                    f"{r['eta']:g}",
                    *_quality(r),
                    _secs(r["seconds_per_image"]),
                ]
                for r in t["guidance"]
            ],
        ),
        "",
        f"![accuracy and cFID against guidance scale]({image_dir}/eval_guidance.png)",
        "",
        f"### Samplers and steps (guidance {rec['guidance_scale']:g}, DDIM eta {ref_eta:g})",
        "",
        _table(
            [
                "sampler",
                "steps",
                "images",
                "accuracy",
                "cFID",
                "floor",
                "U-Net calls / image",
                "s / image",
                f"measured speed-up vs DDPM {ddpm['steps']}",
            ],
            [
                [
                    SAMPLER_NAMES[r["sampler"]],
                    str(r["steps"]),
                    *_quality(r),
                    str(unet_calls(r)),
                    _secs(r["seconds_per_image"]),
                    _speedup(ddpm["seconds_per_image"] / r["seconds_per_image"]),
                ]
                for r in t["steps"]
            ],
        ),
        "",
        "cFID falls with the number of images, so only rows with the same image count compare; the DDPM row "
        "is paired with a DDIM 50 row on as many images. U-Net calls per image (steps, doubled by guidance) "
        "are the load-independent cost; the seconds were measured row by row on a shared machine, so their "
        "ratios carry the noise of its load.",
        "",
        f"![cFID, accuracy and time against steps]({image_dir}/eval_steps.png)",
        "",
        "### Recommended defaults and goals",
        "",
        f'`"defaults": {{"sampler": "{rec["sampler"]}", "steps": {rec["steps"]}, '
        f'"guidance_scale": {rec["guidance_scale"]:g}, "eta": {rec["eta"]:g}}}`',
        "",
    ]
    a, f = goals["accuracy_ddim50"], goals["cfid_ddim50_vs_ddpm"]
    out += [
        f"- Conditional accuracy ≥ {a['target']:.0%} at DDIM 50 (eta {ref_eta:g}), guidance "
        f"{rec['guidance_scale']:g}: "
        f"**{'met' if a['met'] else 'not met'}** ({_acc(a['value'])}).",
        f"- cFID at DDIM 50 (eta {ref_eta:g}) within {f['tolerance']:.0%} of DDPM {f['ddpm_steps']} ({f['images_each']} images "
        f"each): **{'met' if f['met'] else 'not met'}** ({f['ddim50']:.2f} vs {f['ddpm']:.2f}).",
        "",
        f"Samples at the recommended settings, one row per class; a red frame marks an image the judge "
        f"read as another class:\n\n![samples]({image_dir}/eval_samples.png)",
    ]
    return "\n".join(out)


def plot_guidance(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (acc_ax, fid_ax) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120)
    for eta, marker in zip(sorted({r["eta"] for r in rows}), ("o-", "s--", "^:", "D-."), strict=False):
        sel = [r for r in rows if r["eta"] == eta]
        g = [r["guidance_scale"] for r in sel]
        acc_ax.plot(g, [100 * (r["accuracy"] or 0) for r in sel], marker, label=f"DDIM eta {eta:g}")
        fid_ax.errorbar(
            g,
            [r["cfid"] for r in sel],
            yerr=[r["cfid_std"] for r in sel],
            fmt=marker,
            label=f"DDIM eta {eta:g}",
        )
    fid_ax.axhline(rows[0]["cfid_floor"], color="grey", lw=0.8, ls=":", label="real-vs-real floor")
    acc_ax.set_ylabel("conditional accuracy (%)")
    fid_ax.set_ylabel("classifier FID")
    fid_ax.set_ylim(bottom=0)
    for ax in (acc_ax, fid_ax):
        ax.set_xlabel("guidance scale")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"DDIM 50 steps, {rows[0]['num_images']} images per point")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_steps(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    n_main = rows[0]["num_images"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=120)
    for sampler, marker in (("ddim", "o-"), ("dpmsolver++", "s-"), ("ddpm", "D")):
        sel = sorted(
            (r for r in rows if r["sampler"] == sampler and r["num_images"] == n_main),
            key=lambda r: r["steps"],
        )
        if sampler == "ddpm":
            sel = [r for r in rows if r["sampler"] == "ddpm"]
        if not sel:
            continue
        x = [r["steps"] for r in sel]
        name = SAMPLER_NAMES[sampler] + (f" ({sel[0]['num_images']} images)" if sampler == "ddpm" else "")
        axes[0].errorbar(
            x, [r["cfid"] for r in sel], yerr=[r["cfid_std"] for r in sel], fmt=marker, label=name
        )
        axes[1].plot(x, [100 * (r["accuracy"] or 0) for r in sel], marker, label=name)
        axes[2].plot(x, [r["seconds_per_image"] for r in sel], marker, label=name)
    axes[0].axhline(rows[0]["cfid_floor"], color="grey", lw=0.8, ls=":", label="real-vs-real floor")
    from matplotlib.ticker import NullLocator, ScalarFormatter

    ticks = sorted({r["steps"] for r in rows})
    for ax, ylabel in zip(
        axes, ("classifier FID", "conditional accuracy (%)", "seconds per image"), strict=True
    ):
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("denoising steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"samplers at guidance {rows[0]['guidance_scale']:g}; {n_main} images per point unless marked"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sample_grid(ev: Evaluation, per_row: int) -> np.ndarray:
    """Images of one class per row (generation order interleaves classes); misread ones framed red."""
    from latent_ddpm.runtime.images import make_grid

    rgb = np.repeat(ev.images, 3 // ev.images.shape[-1], axis=-1)  # grey to RGB, colour as it is
    if ev.asked is not None:
        wrong = ev.read != ev.asked
        rgb[wrong, :1, :] = rgb[wrong, -1:, :] = rgb[wrong, :, :1] = rgb[wrong, :, -1:] = (220, 30, 30)
        order = np.argsort(ev.asked, kind="stable")
        rgb = rgb[order]
    return make_grid(rgb, nrow=per_row)


def write_report(doc: dict[str, Any], out: Path, samples: Evaluation) -> None:
    from latent_ddpm.runtime.images import save_png

    rows = {r["key"]: r for r in doc["rows"]}
    t = {k: [rows[key] for key in keys] for k, keys in doc["tables"].items()}
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    plot_guidance(t["guidance"], images / "eval_guidance.png")
    plot_steps(t["steps"], images / "eval_steps.png")
    per_row = len(samples.images) // (len(set(samples.asked.tolist())) if samples.asked is not None else 10)
    big = np.kron(sample_grid(samples, per_row), np.ones((2, 2, 1), dtype=np.uint8))  # 2x: 32 px is tiny
    save_png(big, images / "eval_samples.png")
    section = f"{BEGIN}\n{markdown(doc, 'images')}\n{END}"
    md = out / "evaluation.md"
    text = md.read_text(encoding="utf-8") if md.is_file() else f"# Evaluation\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise ValueError(f"{md}: the markers {BEGIN} and {END} are missing; add them where the tables go")
    head, rest = text.split(BEGIN, 1)
    md.write_text(head + section + rest.split(END, 1)[1], encoding="utf-8")
