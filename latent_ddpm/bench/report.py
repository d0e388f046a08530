"""Write a benchmark result as JSON (everything), Markdown (the tables people read) and a PNG (the plot)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from latent_ddpm.files import atomic_write


def write_all(result: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    """Each file written whole or not at all (an interrupted run leaves the previous report)."""
    png = io.BytesIO()
    plot(result, png)
    return [
        atomic_write(out_dir / f"{name}.json", json.dumps(result, indent=2) + "\n"),
        atomic_write(out_dir / f"{name}.md", markdown(result)),
        atomic_write(out_dir / f"{name}.png", png.getvalue()),
    ]


def _ms(s: dict[str, Any]) -> str:
    return f"{1000 * s['median']:.1f} [{1000 * s['min']:.1f}-{1000 * s['max']:.1f}]"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    peak = result["matmul_peak"]
    lines = [
        f"# latent-ddpm bench: {result['created']}",
        "",
        f"- Command: `{result['command']}`",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores used ({result['threads']} threads per backend); "
        f"load average before {m['load_average_1_5_15']}, after {result['load_average_after']}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)}",
        f"- fp32 matmul peak ({peak['kernel']}): **{peak['gflops']:.1f} GFLOP/s** median "
        f"(best {peak['gflops_best']:.1f}); torch `a @ b` on the same product: "
        f"{result['torch_matmul_gflops']:.1f} GFLOP/s (not used as the peak)",
        f"- Protocol: {result['protocol']}",
        "",
    ]
    for model in result["models"]:
        lines += _model_section(model)
    if result.get("pixel"):
        lines += _pixel_section(result["pixel"])
    if result.get("serving"):
        lines += _serving_section(result["serving"])
    return "\n".join(lines) + "\n"


def _model_section(model: dict[str, Any]) -> list[str]:
    lines = [f"## {model['name']}", "", model["description"], ""]
    if "error" in model:
        return [*lines, f"Not measured: {model['error']}", ""]
    lat = model["latency"]
    lines += [
        f"Sampler `{lat['sampler']}`, {lat['steps']} steps, guidance {lat['guidance_scale']} "
        f"(guided models run both halves in one U-Net batch), {lat['warmup']} warm-up + {lat['runs']} timed runs; "
        "median [min-max]; a U-Net call is the mean of a burst of back-to-back calls (about 0.2 s). GFLOP/s: FlopCounterMode's count, which includes the multiplications of 3x3 "
        "convolutions with their zero padding; the column beside it leaves those out "
        f"({_padding_share(lat):.0%} of this U-Net's counted FLOPs).",
        "",
        "| batch | backend | U-Net batch | U-Net call ms | U-Net GFLOP/s | of peak | of peak w/o padding taps | "
        "images/s | vs eager | loop overhead | max diff vs eager (uint8) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in lat["rows"]:
        ips = r["images_per_s"]
        run = r["run_s"]
        lines.append(
            f"| {r['batch']} | {r['backend']} ({r['precision']}) | {r['unet_batch']} | {_ms(r['unet_call_s'])} | "
            f"{r['unet_gflops']:.1f} | {r['fraction_of_peak']:.1%} | {r['fraction_of_peak_without_padding']:.1%} | "
            f"{ips:.3f} "
            f"[{r['batch'] / run['max']:.3f}-{r['batch'] / run['min']:.3f}] | "
            f"{_ratio(r.get('speedup_images_per_s_vs_eager'))} | {r['loop_overhead']['median']:.2%} | "
            f"{r.get('max_abs_diff_vs_eager_uint8', '')} |"
        )
    for name, reason in lat["dropped_backends"].items():
        lines.append(f"\n`{name}` was not measured: {reason}")
    if model.get("cold_start"):
        lines += [
            "",
            "Cold start and memory (fresh process each): seconds from launch, peak resident memory after sampling.",
            "",
            "| backend | batch | imports done s | loaded s | first step s | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for c in model["cold_start"]:
            if "error" in c:
                lines.append(f"| {c['backend']} | {c['batch']} | failed: {c['error']} | | | |")
                continue
            lines.append(
                f"| {c['backend']} | {c['batch']} | {c['import_s']:.2f} | {c['load_s']:.2f} | "
                f"{c['first_step_s']:.2f} | {c['peak_rss_mb']:.0f} |"
            )
    return [*lines, ""]


def _padding_share(lat: dict[str, Any]) -> float:
    row = lat["rows"][0]
    return row["unet_padding_flops"] / row["unet_flops"]


def _pixel_section(p: dict[str, Any]) -> list[str]:
    lat, pix = p["latent"], p["pixel"]
    return [
        "## Latent vs pixel space (the same U-Net, eager PyTorch, batch 1)",
        "",
        "| space | input | GFLOP per call | U-Net call s | GFLOP/s |",
        "|---|---|---:|---:|---:|",
        f"| latent | {lat['input_shape']} | {lat['flops'] / 1e9:.0f} | {lat['unet_call_s']['median']:.2f} "
        f"({lat['unet_call_s']['runs']} calls) | {lat['gflops']:.1f} |",
        f"| pixel | {pix['input_shape']} | {pix['flops'] / 1e9:.0f} | {pix['unet_call_s']['median']:.2f} "
        f"({pix['unet_call_s']['runs']} calls) | {pix['gflops']:.1f} |",
        "",
        f"Predicted cost ratio (FLOPs): **{p['predicted_ratio_flops']:.1f}x**; measured latency ratio: "
        f"**{p['measured_ratio_latency']:.1f}x**. ONNX Runtime not run in pixel space: {p['onnxruntime_skipped']}.",
        "",
    ]


def _serving_section(s: dict[str, Any]) -> list[str]:
    lines = [
        "## Serving: concurrent clients, SamplingEngine vs one request at a time",
        "",
        f"Bundle `{s['bundle']}`; each client sends {s['requests_per_client']} one-image requests back to back "
        f"(closed loop), random classes, its own seeds; engine row budget {s['max_rows']} U-Net rows per call. "
        "Latency: from submission to the answer. Loop overhead: the share of the denoising loop outside the "
        "U-Net (for the engine: its ticks' bookkeeping for every request in the batch).",
        "",
        "| setting | clients | server | images/s | vs 1 client | latency p50 s | latency p95 s | "
        "U-Net rows/call | loop overhead |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    single = {
        (r["setting"], r["mode"]): r["images_per_s"] for r in s["rows"] if r["clients"] == min(_clients(s))
    }
    for r in s["rows"]:
        lat = r["latency_s"]
        lines.append(
            f"| {r['setting']} | {r['clients']} | {r['mode']} | {r['images_per_s']:.2f} | "
            f"{_ratio(r['images_per_s'] / single[(r['setting'], r['mode'])])} | {lat['p50']:.2f} | "
            f"{lat['p95']:.2f} | {r['unet_rows_per_call']:.1f} | {r['loop_overhead']:.2%} |"
        )
    lines += [
        "",
        "The U-Net alone by call size (mean of a ~0.2 s burst, median of 3): where rows/s stops growing is where "
        "a bigger engine batch only adds latency.",
        "",
        "| rows per call | call ms | rows/s |",
        "|---:|---:|---:|",
        *(f"| {u['rows']} | {_ms(u['call_s'])} | {u['rows_per_s']:.0f} |" for u in s["unet_scaling"]),
        "",
    ]
    return lines


def _clients(s: dict[str, Any]) -> list[int]:
    return sorted({r["clients"] for r in s["rows"]})


def plot(result: dict[str, Any], path: Path | io.BytesIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in result["models"] if "latency" in m]
    pixel = result.get("pixel")
    serving = result.get("serving")
    panels = len(models) + (1 if models else 0) + (1 if pixel else 0) + (2 if serving else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.2 * max(panels, 1), 4.2), squeeze=False)
    axes = list(axes[0])
    for ax, model in zip(axes, models, strict=False):
        _images_per_s(ax, model)
    if models:
        _fraction_of_peak(axes[len(models)], models, result["matmul_peak"]["gflops"])
    if pixel:
        _pixel(axes[len(models) + (1 if models else 0)], pixel)
    if serving:
        _serving(axes[-2], axes[-1], serving)
    fig.suptitle(
        f"latent-ddpm bench, {result['machine']['cpu_model']}, {result['threads']} threads", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _images_per_s(ax, model: dict[str, Any]) -> None:
    rows = model["latency"]["rows"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    width = 0.8 / len(backends)
    for i, b in enumerate(backends):
        xs, ys = [], []
        for j, batch in enumerate(batches):
            r = next((r for r in rows if r["backend"] == b and r["batch"] == batch), None)
            if r is not None:
                xs.append(j + i * width)
                ys.append(r["images_per_s"])
        ax.bar(xs, ys, width, label=b)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [str(b) for b in batches])
    ax.set_xlabel("batch (images)")
    ax.set_ylabel("images / s (higher is better)")
    ax.set_yscale("log")
    ax.set_title(f"{model['name']}: {model['latency']['steps']} {model['latency']['sampler']} steps")
    ax.legend(fontsize=8)


def _fraction_of_peak(ax, models: list[dict[str, Any]], peak: float) -> None:
    labels, fractions = [], []
    for model in models:
        for r in model["latency"]["rows"]:
            labels.append(f"{model['name']} b{r['batch']}\n{r['backend']}")
            fractions.append(100 * r["fraction_of_peak"])
    ax.barh(range(len(labels)), fractions, color="tab:gray")
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.axvline(100, color="k", lw=0.8)
    ax.set_xlabel(f"U-Net GFLOP/s, % of the measured matmul peak ({peak:.0f})")
    ax.set_title("achieved vs peak fp32")


def _pixel(ax, pixel: dict[str, Any]) -> None:
    names = ["latent 3x64x64", "pixel 3x256x256"]
    seconds = [pixel["latent"]["unet_call_s"]["median"], pixel["pixel"]["unet_call_s"]["median"]]
    ax.bar(names, seconds, color=["tab:green", "tab:red"])
    ax.set_yscale("log")
    ax.set_ylabel("seconds per U-Net call (eager PyTorch, batch 1)")
    ax.set_title(
        f"same U-Net: measured {pixel['measured_ratio_latency']:.1f}x, FLOPs predict "
        f"{pixel['predicted_ratio_flops']:.1f}x",
        fontsize=9,
    )
    for x, y in enumerate(seconds):
        ax.annotate(f"{y:.2f} s", (x, y), ha="center", va="bottom", fontsize=8)


def _serving(throughput, latency, s: dict[str, Any]) -> None:
    """images/s and p95 latency against the number of clients, engine (solid) vs one at a time (dashed)."""
    for i, setting in enumerate(s["settings"]):
        for mode, style in (("engine", "-o"), ("one-at-a-time", "--s")):
            rows = sorted(
                (r for r in s["rows"] if r["setting"] == setting and r["mode"] == mode), key=_by_clients
            )
            xs = [r["clients"] for r in rows]
            label = f"{setting}, {mode}"
            throughput.plot(xs, [r["images_per_s"] for r in rows], style, color=f"C{i}", label=label)
            latency.plot(xs, [r["latency_s"]["p95"] for r in rows], style, color=f"C{i}", label=label)
    for ax, ylabel, title in (
        (throughput, "images / s (higher is better)", "serving throughput"),
        (latency, "request latency p95, s (lower is better)", "serving latency"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(_clients(s), [str(c) for c in _clients(s)])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
    latency.set_yscale("log")


def _by_clients(row: dict[str, Any]) -> int:
    return row["clients"]
