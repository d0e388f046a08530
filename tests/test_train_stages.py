"""`latent-ddpm train` end to end on the shipped `tiny` recipe: output format, exact resume, two processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latent_ddpm.cli import main
from latent_ddpm.files import _TEMP, _host_tag

ROOT = Path(__file__).resolve().parents[1]


def train(*args: str) -> int:
    return main(["train", "--config", "tiny", "--threads", "1", *args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert train("--out", str(out)) == 0
    return out


def test_output_is_a_diffusers_latent_ddpm(run_dir: Path):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel

    vae = AutoencoderKL.from_pretrained(run_dir / "vae")
    unet = UNet2DModel.from_pretrained(run_dir / "unet")
    scheduler = DDIMScheduler.from_pretrained(run_dir / "scheduler")
    assert (run_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (run_dir / "vae" / "diffusion_pytorch_model.safetensors").is_file()

    # The scaling factor was measured on the data: scaled posterior samples have unit spread.
    assert vae.config.scaling_factor != AutoencoderKL().config.scaling_factor
    from latent_ddpm.train.config import load_recipe
    from latent_ddpm.train.data import load_images
    from latent_ddpm.train.vae_stage import encode_dataset

    recipe, _ = load_recipe("tiny")
    mean, std = encode_dataset(vae, load_images(recipe.data, recipe.seed), "cpu")
    z = (
        mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    ) * vae.config.scaling_factor
    assert 0.95 < float(z.std()) < 1.05

    assert unet.config.in_channels == vae.config.latent_channels == 4
    assert unet.config.sample_size == 8  # 32px through the two downsamplings of the tiny VAE
    assert unet.config.num_class_embeds == 11  # ten digits + the null class
    assert scheduler.config.beta_schedule == "linear" and scheduler.config.clip_sample is False
    assert scheduler.config.prediction_type == "epsilon"

    meta = json.loads((run_dir / "latent_ddpm.json").read_text())
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert meta["null_class"] == 10
    assert meta["image_size"] == [32, 32] and meta["image_channels"] == 1
    assert meta["defaults"] == {"sampler": "ddim", "steps": 4, "guidance_scale": 3.0, "eta": 0.0}
    assert meta["recipe"]["unet"]["steps"] == 6 and meta["recipe"]["data"]["max_images"] == 200

    # The EMA weights (not the last raw weights) are what ships.
    raw = load_file(run_dir / "checkpoints" / "unet" / "step_0000006" / "model.safetensors")
    shipped = unet.state_dict()
    assert raw.keys() == shipped.keys()
    assert any(not torch.equal(raw[k], shipped[k]) for k in raw)

    for name in ("vae_loss.csv", "unet_loss.csv", "vae_loss.png", "unet_loss.png"):
        assert (run_dir / "logs" / name).stat().st_size > 0
    assert len((run_dir / "logs" / "unet_loss.csv").read_text().splitlines()) == 1 + 6
    for name in ("vae_step_0000003.png", "unet_step_0000003.png", "unet_final.png", "vae_final.png"):
        assert (run_dir / "samples" / name).is_file()


def test_refuses_to_overwrite_a_run(run_dir: Path, capsys):
    assert train("--stage", "unet", "--out", str(run_dir)) == 2
    assert "--resume" in capsys.readouterr().err


def test_unet_stage_needs_a_vae(tmp_path: Path, capsys):
    assert train("--stage", "unet", "--out", str(tmp_path / "empty")) == 2
    assert "--stage vae" in capsys.readouterr().err


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def stale_temp_name(name: str) -> str:
    """The name of a temporary of `name` whose writer (this host, a process that has exited) is gone."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    name = f".{name}.tmp-{_host_tag()}-{int(child.stdout)}-0123abcd"
    assert _TEMP.match(name)
    return name


@pytest.mark.parametrize("stage", ["vae", "unet"])
def test_resume_ends_where_the_uninterrupted_run_ends(run_dir: Path, tmp_path: Path, stage: str):
    """6 steps in one go vs. 3 steps (--max-steps), then --resume: same weights, optimizer, EMA and log.

    Tolerance: rtol=1e-6, atol=1e-7 (a few float32 ulps). Both runs execute the same kernels on the same
    data and noise, so they should agree to the bit; the slack only allows for a different reduction order,
    while a step replayed, skipped or fed other noise moves weights by ~lr = 1e-3 (checked below).
    """
    full, split = tmp_path / "full", tmp_path / "split"
    for out in (full, split):
        if stage == "unet":
            out.mkdir()
            shutil.copytree(run_dir / "vae", out / "vae")
    no_previews = ("--set", f"{stage}.sample_every=0")
    assert train("--stage", stage, "--out", str(full), *no_previews) == 0
    assert train("--stage", stage, "--out", str(split), "--max-steps", "3", *no_previews) == 0
    assert not (split / stage / "config.json").exists()  # stopped early: no final model yet
    half = _weights(split / "checkpoints" / stage / "step_0000003" / "model.safetensors")
    # What a kill during step 5's checkpoint would leave: a logged step past the checkpoint, a partial save.
    with (split / "logs" / f"{stage}_loss.csv").open("a") as f:
        f.write("4,0.5,0.001,1.0\n")
    (split / "checkpoints" / stage / stale_temp_name("step_0000005")).mkdir()
    assert train("--stage", stage, "--out", str(split), "--resume") == 0
    kept = sorted(p.name for p in (split / "checkpoints" / stage).iterdir())
    assert kept == ["step_0000003", "step_0000006"]  # the newest two; the dead writer's temporary is gone

    tight = {"rtol": 1e-6, "atol": 1e-7}
    ckpt = Path("checkpoints") / stage / "step_0000006"
    a, b = _weights(full / ckpt / "model.safetensors"), _weights(split / ckpt / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], **tight)
    assert any(not torch.allclose(half[k], a[k], **tight) for k in a), (
        "the tolerance would not see a lost step"
    )
    for k, v in _weights(full / stage / "diffusion_pytorch_model.safetensors").items():
        torch.testing.assert_close(
            _weights(split / stage / "diffusion_pytorch_model.safetensors")[k], v, **tight
        )
    state_a, state_b = (
        _weights(full / ckpt / "state.safetensors"),
        _weights(split / ckpt / "state.safetensors"),
    )
    moments = [k for k in state_a if k.startswith("optimizer.state.") and k.endswith(".exp_avg_sq")]
    assert len(moments) == len(a)  # one per parameter
    for k in state_a:
        torch.testing.assert_close(state_b[k], state_a[k], **tight)
    log_a = (full / "logs" / f"{stage}_loss.csv").read_text()
    assert (split / "logs" / f"{stage}_loss.csv").read_text() == log_a


def test_resume_refuses_a_changed_recipe(run_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert train("--stage", "vae", "--out", str(out), "--max-steps", "3") == 0
    assert train("--stage", "vae", "--out", str(out), "--resume", "--set", "vae.lr=0.5") == 2
    assert "vae.lr: 0.001 -> 0.5" in capsys.readouterr().err


def test_two_processes_hold_identical_weights(run_dir: Path, tmp_path: Path):
    """Two CPU processes (gloo) train the U-Net with gradient accumulation; each reports a weight hash."""
    out = tmp_path / "ddp"
    out.mkdir()
    shutil.copytree(run_dir / "vae", out / "vae")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "latent_ddpm", "train", "--config", "tiny", "--stage", "unet", "--cpu", "--threads", "1",
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = json.loads((out / "logs" / "unet_rank_weights.json").read_text())["sha256_per_rank"]
    assert len(hashes) == 2
    assert hashes[0] == hashes[1]
    assert hashes[0]["model"] != hashes[0]["ema"]
    summary = json.loads((out / "logs" / "unet_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert (out / "latent_ddpm.json").is_file()


@pytest.mark.parametrize(
    ("prediction", "schedule"), [("v_prediction", "squaredcos_cap_v2"), ("sample", "linear")]
)
def test_other_parameterisations_reach_the_shipped_scheduler(
    run_dir: Path, tmp_path: Path, prediction, schedule
):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(run_dir / "vae", out / "vae")
    knobs = [f"unet.prediction_type={prediction}", f"unet.beta_schedule={schedule}", "unet.steps=2"]
    knobs += ["unet.warmup_steps=0", "unet.sample_every=0", "unet.timestep_spacing=leading"]
    assert train("--stage", "unet", "--out", str(out), *[a for k in knobs for a in ("--set", k)]) == 0
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDIMScheduler"
    assert (config["prediction_type"], config["beta_schedule"]) == (prediction, schedule)
    assert config["timestep_spacing"] == "leading" and config["clip_sample"] is False
    recipe = json.loads((out / "latent_ddpm.json").read_text())["recipe"]
    assert recipe["unet"]["prediction_type"] == prediction


def _close(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7)


def test_max_steps_applies_to_each_stage_of_all(run_dir: Path, tmp_path: Path, capsys):
    """--stage all --max-steps 3: the autoencoder stops at 3 and is written as it is, the U-Net then trains
    its 3 steps on it; --resume finishes both, and ends exactly where the uninterrupted run ends."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "With --stage all it applies to each stage" in " ".join(capsys.readouterr().out.split())
    out = tmp_path / "run"
    assert train("--out", str(out), "--max-steps", "3") == 0
    printed = capsys.readouterr().out
    assert "stopped vae + unet at --max-steps 3" in printed
    assert (out / "vae" / "config.json").is_file()  # the step-3 autoencoder, for the U-Net
    assert (out / "checkpoints" / "unet" / "step_0000003").is_dir()
    assert not (out / "unet").exists() and not (out / "latent_ddpm.json").exists()
    assert len((out / "logs" / "unet_loss.csv").read_text().splitlines()) == 1 + 3

    assert train("--out", str(out), "--resume") == 0
    assert "trained on another autoencoder" in capsys.readouterr().out  # so the U-Net started again
    for part in ("vae", "unet"):
        _close(
            run_dir / part / "diffusion_pytorch_model.safetensors",
            out / part / "diffusion_pytorch_model.safetensors",
        )
    assert (
        json.loads((out / "latent_ddpm.json").read_text())["recipe"]
        == json.loads((run_dir / "latent_ddpm.json").read_text())["recipe"]
    )


@pytest.fixture
def paused_vae(tmp_path: Path) -> Path:
    """A vae run stopped at step 5: checkpoints at steps 3 and 5 (checkpoint_every = 3, and the last step)."""
    out = tmp_path / "run"
    assert train("--stage", "vae", "--out", str(out), "--max-steps", "5", "--set", "vae.sample_every=0") == 0
    ckpts = sorted(p.name for p in (out / "checkpoints" / "vae").iterdir())
    assert ckpts == ["step_0000003", "step_0000005"]
    return out


@pytest.mark.parametrize("damaged", ["model.safetensors", "state.safetensors", "trainer_state.json"])
def test_a_corrupted_newest_checkpoint_falls_back_to_the_one_before(
    paused_vae: Path, run_dir: Path, damaged: str, capsys
):
    path = paused_vae / "checkpoints" / "vae" / "step_0000005" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a truncated write
    assert train("--stage", "vae", "--out", str(paused_vae), "--resume", "--set", "vae.sample_every=0") == 0
    printed = capsys.readouterr().out
    assert f"cannot resume from step_0000005: {path}: cannot be read as" in printed
    assert "resuming from step_0000003" in printed and "resumed from" in printed
    _close(
        run_dir / "vae" / "diffusion_pytorch_model.safetensors",
        paused_vae / "vae" / "diffusion_pytorch_model.safetensors",
    )


def test_no_loadable_checkpoint_is_one_line_naming_the_file(paused_vae: Path, capsys):
    for step in ("step_0000003", "step_0000005"):
        path = paused_vae / "checkpoints" / "vae" / step / "trainer_state.json"
        path.write_text('{"format": "latent-ddpm-checkpoint", "st')
    assert train("--stage", "vae", "--out", str(paused_vae), "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert (
        f"{paused_vae / 'checkpoints' / 'vae' / 'step_0000005' / 'trainer_state.json'}: cannot be read as JSON"
        in err
    )
    assert "1 older checkpoint(s) failed too" in err


class _CreatesAFile:
    """Unpickling this runs open(path, "w"): what a hostile run folder would do with any code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_never_unpickles_a_checkpoint(paused_vae: Path, tmp_path: Path, capsys):
    """A run folder handed over with a pickle in its checkpoints (where Accelerate's `save_state` kept the
    LR schedule) is refused, naming the file, and the pickle never runs."""
    marker = tmp_path / "pwned"
    for step in ("step_0000003", "step_0000005"):
        torch.save(
            _CreatesAFile(marker), paused_vae / "checkpoints" / "vae" / step / "custom_checkpoint_0.pkl"
        )
    assert train("--stage", "vae", "--out", str(paused_vae), "--resume") == 2
    assert not marker.exists(), "resume ran code from a checkpoint"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        f"{paused_vae / 'checkpoints' / 'vae' / 'step_0000005' / 'custom_checkpoint_0.pkl'}: not part of"
        in err
    )
    assert "never unpickles" in err


def test_refuses_to_replace_a_folder_training_did_not_write(tmp_path: Path, capsys):
    out = tmp_path / "run"
    (out / "vae").mkdir(parents=True)
    (out / "vae" / "notes.txt").write_text("mine")
    assert train("--stage", "vae", "--out", str(out), "--resume") == 2
    err = capsys.readouterr().err
    assert f"{out / 'vae'} is not empty and is not a diffusers AutoencoderKL folder" in err
    assert sorted(p.name for p in out.iterdir()) == ["vae"]  # refused before any work
    assert (out / "vae" / "notes.txt").read_text() == "mine"


def test_a_corrupted_autoencoder_is_one_line_naming_it(run_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run_dir / "vae", out / "vae")
    weights = out / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    assert train("--stage", "unet", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{out / 'vae'}: cannot load the trained autoencoder" in err
    assert sorted(p.name for p in out.iterdir()) == ["vae"]
