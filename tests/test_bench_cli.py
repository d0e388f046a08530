"""`latent-ddpm bench` end to end on a tiny model (1 warm-up, 1 run): JSON, Markdown and PNG, well formed.

Timings are not asserted (the machine is shared); what is asserted is that every figure the report promises
is there and sane, and that the runtime and the PyTorch reference sampled the same images from the same
latents, which is what makes their timings comparable.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")
OPENVINO = importlib.util.find_spec("openvino") is not None

from tiny_models import build_tiny_model  # noqa: E402

from latent_ddpm.bench.configs import ldm_celebahq_256 as ldm  # noqa: E402
from latent_ddpm.bench.machine import matmul_peak  # noqa: E402
from latent_ddpm.bench.pixel_case import attention_scores_bytes  # noqa: E402
from latent_ddpm.bench.runtimes import RUNTIMES  # noqa: E402
from latent_ddpm.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run without --out or --cache, as a user would: the reports land in the current folder, and the models
    bench builds live in a temporary folder that is gone afterwards (nothing in the home or cache folder)."""
    root = tmp_path_factory.mktemp("bench")
    (cwd := root / "cwd").mkdir()
    (home := root / "home").mkdir()
    (scratch := root / "tmp").mkdir()
    src = build_tiny_model("kl_cond", root / "src")
    argv = [
        "bench",
        "--models",
        "digits",
        "serving",
        "--source",
        str(src),
        "--batches",
        "1",
        "2",
        "--steps",
        "2",
    ]
    argv += ["--clients", "1", "3", "--serving-requests", "2", "--max-rows", "4"]
    argv += ["--warmup", "1", "--runs", "1", "--no-compile", "--no-validate", "--threads", "1"]
    argv += ["--runtimes", *RUNTIMES] if OPENVINO else ["--runtimes", "onnxruntime", "onnxruntime-static"]
    argv += ["--name", "tiny"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        mp.setattr(tempfile, "tempdir", str(scratch))
        assert main(argv) == 0
    assert sorted(p.name for p in cwd.iterdir()) == ["tiny.json", "tiny.md", "tiny.png"]
    # matplotlib's font cache and ONNX Runtime's device id do land in ~/.cache; nothing of ours does
    assert not list(home.rglob("*latent*")) and not any(scratch.iterdir())
    return cwd


def test_json_has_every_figure(report: Path) -> None:
    result = json.loads((report / "tiny.json").read_text())
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu_model"]
    assert result["machine"]["versions"]["onnxruntime"] and result["machine"]["versions"]["torch"]
    assert result["matmul_peak"]["gflops"] > 0 and result["threads"] == 1
    (model,) = result["models"]
    rows = model["latency"]["rows"]
    timed = ("onnxruntime", "onnxruntime-static", "torch-eager") + (("openvino",) if OPENVINO else ())
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in timed for n in (1, 2)}
    if OPENVINO:  # bf16 needs a passed gate in the bundle, which the tiny export does not have
        assert "latent-ddpm validate-precision" in model["latency"]["dropped_backends"]["openvino-bf16"]
    for r in rows:
        assert r["unet_batch"] == 2 * r["batch"]  # the tiny model is guided: both halves in one call
        assert r["unet_call_s"]["median"] > 0 and r["unet_call_s"]["runs"] == 1
        assert r["images_per_s"] > 0 and r["unet_flops"] > 0
        assert 0 <= r["loop_overhead"]["median"] < 1
        assert r["fraction_of_peak"] == pytest.approx(r["unet_gflops"] / result["matmul_peak"]["gflops"])
        # Same model, latents, labels and steps: the exporter's gate allows 2/255 between the two.
        assert r["max_abs_diff_vs_eager_uint8"] <= 2
    eager = next(r for r in rows if r["backend"] == "torch-eager")
    assert eager["speedup_images_per_s_vs_eager"] == pytest.approx(1.0)
    cold = model["cold_start"]
    assert {(c["backend"], c["batch"]) for c in cold} == {
        (b, n) for b in ("runtime", "torch") for n in (1, 2)
    }
    for c in cold:
        assert 0 < c["import_s"] <= c["load_s"] <= c["first_step_s"] and c["peak_rss_mb"] > 0


def test_serving_scenario(report: Path) -> None:
    """Every (setting, clients, server) measured, each request answered, the engine's calls within its row
    budget and batching when several clients wait (3 clients of one guided image = 6 rows > 4: calls of 4)."""
    serving = json.loads((report / "tiny.json").read_text())["serving"]
    assert serving["max_rows"] == 4 and len(serving["settings"]) == 2
    runs = {(r["setting"], r["clients"], r["mode"]): r for r in serving["rows"]}
    assert set(runs) == {
        (s, c, m) for s in serving["settings"] for c in (1, 3) for m in ("engine", "one-at-a-time")
    }
    for (_, clients, mode), r in runs.items():
        assert r["requests"] == 2 * clients and r["images_per_s"] > 0
        assert 0 < r["latency_s"]["p50"] <= r["latency_s"]["p95"] <= r["latency_s"]["max"]
        assert 0 <= r["loop_overhead"] < 1
        assert 0 < r["unet_rows_per_call"] <= (4 if mode == "engine" else 2)
    assert any(r["unet_rows_per_call"] > 2 for k, r in runs.items() if k[1:] == (3, "engine"))
    assert [u["rows"] for u in serving["unet_scaling"]] == [2**k for k in range(9)]
    assert all(u["rows_per_s"] > 0 for u in serving["unet_scaling"])
    text = (report / "tiny.md").read_text()
    assert "## Serving" in text and text.count("| engine |") == 4 and "| rows per call |" in text


def test_markdown_and_png(report: Path) -> None:
    text = (report / "tiny.md").read_text()
    assert "| batch | backend |" in text and "fp32 matmul peak" in text and "Cold start" in text
    assert text.count("| onnxruntime (") == 2 and text.count("| onnxruntime-static (") == 2
    assert text.count("| torch-eager (") == 2
    from PIL import Image

    with Image.open(report / "tiny.png") as png:
        assert png.format == "PNG" and png.width > 300 and png.height > 200
        assert len(np.unique(np.asarray(png.convert("L")))) > 10  # a drawn plot, not a blank canvas


def test_matmul_peak_is_positive_and_consistent() -> None:
    peak = matmul_peak(threads=1, n=256, warmup=1, runs=3)
    assert peak["gflops"] > 0
    assert peak["gflops"] == pytest.approx(2 * 256**3 / peak["seconds"]["median"] / 1e9)


def test_pixel_space_attention_would_not_fit() -> None:
    # The first attention level of the LDM U-Net at 256x256: 448 / 32 = 14 heads over 128 x 128 tokens.
    assert attention_scores_bytes(ldm.UNET, 256) == 14 * (128 * 128) ** 2 * 4
    assert attention_scores_bytes(ldm.UNET, 64) == 14 * (32 * 32) ** 2 * 4
