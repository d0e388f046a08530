"""`latent-ddpm sample` end to end on a factory bundle: PNG grid, per-image files, printed seed, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle
from PIL import Image

from latent_ddpm.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("cli") / "b")


def test_writes_grid_and_images(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grid.png"
    rc = main(
        [
            "sample",
            "--bundle",
            str(bundle),
            "--num",
            "4",
            "--steps",
            "5",
            "--seed",
            "42",
            "--class",
            "3",
            "--guidance",
            "2",
            "--out",
            str(out),
            "--out-dir",
            str(tmp_path / "each"),
            "--quiet",
        ]
    )
    assert rc == 0
    grid = np.asarray(Image.open(out))
    assert grid.ndim == 2 and grid.shape[0] >= 32 and grid.shape[1] >= 4 * 32
    assert len(list((tmp_path / "each").glob("*.png"))) == 4
    printed = capsys.readouterr().out
    assert "seed=42" in printed and "classes=3,3,3,3" in printed and "per_step=" in printed


def test_same_seed_same_png(bundle: Path, tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        assert (
            main(
                [
                    "sample",
                    "--bundle",
                    str(bundle),
                    "--num",
                    "2",
                    "--steps",
                    "4",
                    "--seed",
                    "7",
                    "--out",
                    str(tmp_path / name),
                    "--quiet",
                ]
            )
            == 0
        )
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def _sample_process(bundle: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m latent_ddpm sample` in a process of its own: what a user's shell sees (exit code, stderr)."""
    command = [sys.executable, "-m", "latent_ddpm", "sample", "--bundle", str(bundle), "--out", str(out)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--class", "12"], "class label 12 is outside 0..9"),
        (["--class", "cat"], "class 'cat' is not one of"),
        (["--steps", "0"], "steps must be an integer in 1..1000"),
        (["--num", "0"], "--num must be an integer >= 1"),
        (["--eta", "-1"], "eta must be a number in 0..1"),
        (["--backend", "nope"], "unknown backend 'nope'"),
        (["--providers", "NoSuchExecutionProvider"], "NoSuchExecutionProvider not available"),
    ],
)
def test_bad_arguments_exit_2_with_message(
    bundle: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    proc = _sample_process(bundle, tmp_path / "x.png", "--quiet", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_bad_bundle_path(tmp_path: Path) -> None:
    proc = _sample_process(tmp_path / "missing", tmp_path / "x.png")
    assert proc.returncode == 2 and "bundle directory not found" in proc.stderr


def test_help_explains_every_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "latent_ddpm", "sample", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for flag in (
        "--bundle",
        "--num",
        "--steps",
        "--sampler",
        "--eta",
        "--seed",
        "--class",
        "--guidance",
        "--backend",
        "--out",
        "--out-dir",
    ):
        assert flag in proc.stdout


def _sample(bundle: Path, out: Path, *args: str) -> list[str]:
    return ["sample", "--bundle", str(bundle), "--out", str(out), "--steps", "2", "--quiet", *args]


def _one_line_error(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("latent-ddpm sample: error: "), err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--eta", "1.5", "--sampler", "ddim"],
            "eta must be a number in 0..1 (0 deterministic, 1 DDPM-like), got 1.5",
        ),
        (["--guidance", "1e20"], "guidance_scale must be a number in 0..20 (1 = no guidance), got 1e+20"),
        (["--guidance", "3.4e38"], "guidance_scale must be a number in 0..20"),
        (["--guidance", "nan"], "guidance_scale must be a number in 0..20"),
        (["--num", "1000000"], "--num=1000000 is more than the limit of 1024 per call; raise --max-images"),
        (["--num", "20", "--max-images", "10"], "--num=20 is more than the limit of 10 per call"),
        (["--max-images", "0"], "--max-images must be an integer >= 1, got 0"),
        (["--threads", "1000"], "--threads 1000 is more than the"),
        (["--threads", "0"], "--threads must be a positive integer, got 0"),
    ],
)
def test_values_that_gave_blank_images_or_hung_are_refused(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "x.png"
    assert message in _one_line_error(capsys, main(_sample(bundle, out, *args)))
    assert list(tmp_path.iterdir()) == []


def test_a_raised_max_images_allows_a_large_request(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    assert main(_sample(bundle, out, "--num", "1030", "--max-images", "1030", "--steps", "1")) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[1] == 10 * 34 + 2 and grid.shape[0] == 103 * 34 + 2  # 10 per row, 2 px padding


def test_a_model_that_overflows_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle(tmp_path / "b", overflow="unet")
    out, each = tmp_path / "out" / "x.png", tmp_path / "each"
    rc = main(_sample(bundle, out, "--out-dir", str(each), "--sampler", "ddim"))
    assert "the U-Net output (unet.onnx) at step 1/2 (t=501) holds NaN or Inf" in _one_line_error(capsys, rc)
    assert not out.exists() and not out.parent.exists() and not each.exists()


def _unwritable_outputs(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "afile").write_text("a user's file")
    (tmp_path / "adir.png").mkdir()
    return [
        (tmp_path / "adir.png", "is a folder; give a file name"),
        (tmp_path / "afile" / "x.png", "is a file, not a folder"),
        (tmp_path / "afile" / "sub" / "x.png", "is a file, not a folder"),
        (Path(str(tmp_path / "a\0b.png")), "--out contains a NUL byte"),
        (tmp_path / ("n" * 300 + ".png"), "bytes; this file system allows 255"),
        (tmp_path.joinpath(*["d" * 200] * 25, "x.png"), "the path is"),
        (tmp_path / "x.jpg", "--out must name a .png file"),
        # a pseudo file system: os.access says writable, creating a file there fails (was a traceback after sampling)
        *([(Path("/proc/x.png"), "cannot write in /proc")] if Path("/proc/self").is_dir() else []),
    ]


def test_unwritable_out_is_refused_before_sampling(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for out, message in _unwritable_outputs(tmp_path):
        rc = main(_sample(bundle, out))
        assert message in _one_line_error(capsys, rc), out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png", "afile"]
    assert (
        list((tmp_path / "adir.png").iterdir()) == [] and (tmp_path / "afile").read_text() == "a user's file"
    )
    rc = main(_sample(bundle, tmp_path / "ok.png", "--out-dir", str(tmp_path / "afile")))
    assert f"--out-dir {tmp_path / 'afile'} exists and is not a folder" in _one_line_error(capsys, rc)
    assert not (tmp_path / "ok.png").exists()


def test_out_on_a_read_only_file_system_is_refused_before_sampling(bundle: Path, tmp_path: Path) -> None:
    """A real read-only mount, in a private user + mount namespace (no root needed); skipped where the kernel
    does not allow unprivileged namespaces."""
    import shutil

    unshare = shutil.which("unshare")
    ro = tmp_path / "ro"
    ro.mkdir()
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged user namespaces here")
    sample = f"{sys.executable} -m latent_ddpm sample --bundle {bundle} --steps 2 --quiet"
    script = (
        f"mount -t tmpfs -o ro tmpfs {ro} || exit 9; "
        f'{sample} --out {ro / "x.png"}; echo "rc=$?"; {sample} --out {ro / "sub" / "x.png"}; echo "rc=$?"'
    )
    proc = subprocess.run([unshare, "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["rc=2", "rc=2"], proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert all(f"cannot write in {ro} (a read-only file system)" in line for line in lines), lines


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON nested too deeply"),
        (b'{"format_version": ' + b"9" * 5000 + b"}", "an integer of 5000 digits"),
    ],
)
def test_unreadable_bundle_json_is_one_line(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    (bad / "bundle.json").write_bytes(content)
    out = tmp_path / "x.png"
    assert message in _one_line_error(capsys, main(_sample(bad, out)))
    assert not out.exists()


def test_value_range_of_strings_is_one_line(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from bundle_factory import rewrite_meta

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    rewrite_meta(bad, image={"channels": 1, "height": 32, "width": 32, "value_range": ["low", "high"]})
    out = tmp_path / "x.png"
    assert "value_range must be [low, high]" in _one_line_error(capsys, main(_sample(bad, out)))
    assert not out.exists()


@pytest.mark.parametrize(
    ("bundle_arg", "message"),
    [
        ("a\0b", r"bundle path 'a\x00b' contains a NUL byte"),
        ("a" * 5000, "... (5000 characters): File name too long"),
    ],
)
def test_unusable_bundle_paths_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bundle_arg: str, message: str
) -> None:
    out = tmp_path / "x.png"
    rc = main(["sample", "--bundle", bundle_arg, "--out", str(out), "--quiet"])
    assert message in _one_line_error(capsys, rc)
    assert not out.exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "latent_ddpm", "sample", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_init_image_runs_img2img_as_the_api_does(bundle: Path, tmp_path: Path) -> None:
    from latent_ddpm.runtime import Pipeline
    from latent_ddpm.runtime.images import open_picture

    picture = tmp_path / "start.png"
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (40, 2))).save(picture)  # 64x40, resized
    each = tmp_path / "each"
    args = ["--bundle", str(bundle), "--init-image", str(picture), "--strength", "0.5", "--num", "2"]
    proc = _cli(
        *args, "--steps", "6", "--seed", "3", "--out", str(tmp_path / "g.png"), "--out-dir", str(each)
    )
    assert proc.returncode == 0, proc.stderr
    assert "strength=0.5 ran=3" in proc.stdout
    pipe = Pipeline.from_bundle(bundle)
    want = pipe.img2img([open_picture(picture, "x", "y")] * 2, strength=0.5, steps=6, seed=3).images
    got = np.stack([_pixels(each / f"{i:04d}.png") for i in range(2)])
    np.testing.assert_array_equal(got, want[..., 0])
    noise = pipe.generate(num_images=2, steps=6, seed=3).images
    assert not np.array_equal(got, noise[..., 0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--init-image", "{tmp}/missing.png"], "--init-image {tmp}/missing.png: no such file"),
        (["--init-image", "{tmp}"], "--init-image {tmp}: no such file"),
        (["--init-image", "{tmp}/notes.txt"], "--init-image {tmp}/notes.txt is not an image Pillow can read"),
        (["--init-image", "{tmp}/ok.png", "--strength", "1.5"], "--strength must be in [0, 1], got 1.5"),
        (["--init-image", "{tmp}/ok.png", "--strength", "nan"], "--strength must be in [0, 1], got nan"),
        (
            ["--strength", "0.5"],
            "--strength is for img2img: give the picture to start from with --init-image",
        ),
        (["--scale", "0"], "--scale must be an integer in 1..16, got 0"),
        (["--scale", "17"], "--scale must be an integer in 1..16, got 17"),
        (
            ["--scale", "16", "--num", "1024"],
            "--scale 16 makes a 5472x56064 grid (307 megapixels); at most 64",
        ),
    ],
)
def test_bad_init_image_strength_or_scale_is_one_line_before_any_work(
    bundle: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    Image.new("L", (8, 8)).save(tmp_path / "ok.png")
    out = tmp_path / "out" / "x.png"
    proc = _cli("--bundle", str(bundle), "--out", str(out), *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message.format(tmp=tmp_path) in proc.stderr, proc.stderr
    assert not out.parent.exists()


def test_init_image_needs_a_bundle_with_an_encoder(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "no-encoder", with_encoder=False)
    Image.new("L", (8, 8)).save(tmp_path / "ok.png")
    out = tmp_path / "x.png"
    proc = _cli("--bundle", str(bundle), "--out", str(out), "--init-image", str(tmp_path / "ok.png"))
    assert proc.returncode == 2 and "has no vae_encoder.onnx, so img2img is not available" in proc.stderr
    assert not out.exists()


def test_scale_enlarges_grid_and_images_with_nearest_neighbour(bundle: Path, tmp_path: Path) -> None:
    common = ["--bundle", str(bundle), "--num", "3", "--steps", "3", "--seed", "9"]
    assert _cli(*common, "--out", str(tmp_path / "small.png")).returncode == 0
    proc = _cli(
        *common, "--scale", "3", "--out", str(tmp_path / "big.png"), "--out-dir", str(tmp_path / "each")
    )
    assert proc.returncode == 0, proc.stderr
    small, big = _pixels(tmp_path / "small.png"), _pixels(tmp_path / "big.png")
    assert small.shape == (36, 3 * 34 + 2) and big.shape == (3 * 36, 3 * (3 * 34 + 2))
    np.testing.assert_array_equal(big, small.repeat(3, axis=0).repeat(3, axis=1))
    first = _pixels(tmp_path / "each" / "0000.png")
    assert first.shape == (96, 96)
    np.testing.assert_array_equal(first[::3, ::3], small[2:34, 2:34])
