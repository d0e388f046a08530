"""What a run leaves for people to look at: a loss log (CSV), a loss curve and image grids (PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

FIELDS = ("step", "loss", "lr", "grad_norm")


class LossLog:
    """Append-only CSV of per-step losses; on resume, rows past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_log(path) if resume_step and path.exists() else []
        with path.open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(FIELDS)
            writer.writerows([r[k] for k in FIELDS] for r in rows if r["step"] <= resume_step)
        self._file = path.open("a", newline="", buffering=1)  # line-buffered: `tail -f` shows progress
        self._writer = csv.writer(self._file, lineterminator="\n")

    def write(self, step: int, loss: float, lr: float, grad_norm: float) -> None:
        self._writer.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{grad_norm:.6g}"])

    def close(self) -> None:
        self._file.close()


def read_log(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [
            {k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)
        ]


def smoothed(values: np.ndarray, window: int = 50) -> np.ndarray:
    """Running mean over the last `window` values (shorter at the start)."""
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_loss(log_path: Path, png_path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, loss, color="0.75", linewidth=0.6, label="per step")
    ax.plot(steps, smoothed(loss), color="C0", linewidth=1.6, label="running mean (50 steps)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


def save_grid(images, nrow: int, path: Path, scale: int = 2) -> None:
    """Images (N, C, H, W) in [-1, 1] (torch or numpy) -> one PNG, `nrow` images per row, 2px gaps."""
    arr = np.asarray(images.detach().float().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
    arr = ((arr.clip(-1, 1) + 1) * 127.5).round().astype(np.uint8)
    n, c, h, w = arr.shape
    rows = -(-n // nrow)
    gap = 2
    canvas = np.full((rows * (h + gap) + gap, nrow * (w + gap) + gap, c), 255, np.uint8)
    for i, im in enumerate(arr):
        r, col = divmod(i, nrow)
        canvas[
            gap + r * (h + gap) : gap + r * (h + gap) + h, gap + col * (w + gap) : gap + col * (w + gap) + w
        ] = im.transpose(1, 2, 0)
    out = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if scale > 1:
        out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
