"""Recipes and overrides: every bad key or value is an error that names it, before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_ddpm.cli import build_parser, main
from latent_ddpm.train.config import SCHEMA, load_recipe, parse_override, shipped_recipes
from latent_ddpm.train.errors import ConfigError


def test_shipped_recipes_load_and_set_every_knob():
    assert {"digits", "tiny"} <= set(shipped_recipes())
    recipe, path = load_recipe("digits")
    assert path.name == "digits.toml"
    assert recipe.unet.num_train_timesteps == 1000 and recipe.data.source == "mnist_5k"
    # The default recipe documents every knob: none is left to a silent code default.
    text = path.read_text()
    for key in SCHEMA:
        assert f"\n{key.rsplit('.', 1)[-1]} =" in text, key


def test_overrides_are_toml_literals_and_bare_words_are_strings():
    recipe, _ = load_recipe(
        "digits",
        [
            "unet.lr=2e-4",
            "unet.block_out_channels=[32, 64, 64]",
            "data.source=some/folder",
            "unet.warmup_steps=10",
        ],
    )
    assert recipe.unet.lr == 2e-4
    assert recipe.unet.block_out_channels == [32, 64, 64]
    assert recipe.data.source == "some/folder"
    assert parse_override("vae.kl_weight=1") == ("vae.kl_weight", 1)
    assert load_recipe("digits", ["vae.kl_weight=1"])[0].vae.kl_weight == 1.0  # ints are fine for floats


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("unet.lrr=1e-4", "unknown key 'unet.lrr' (did you mean 'unet.lr'?)"),
        ("unet.lr", "expected KEY=VALUE"),
        ("unet.steps=ten", "unet.steps must be an integer, got 'ten'"),
        ("unet.steps=2.5", "unet.steps must be an integer, got 2.5"),
        ("unet.attention=[true, 1]", "unet.attention must be true or false, got 1"),
        ("unet.prediction_type=noise", "unet.prediction_type = 'noise' is invalid: expected one of epsilon"),
        ("unet.attention=[true]", "unet.attention = [True] is invalid: needs one flag per level"),
        ("vae.batch_size=10", "vae.batch_size = 10 is invalid"),
        ("data.channels=2", "data.channels = 2 is invalid"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str):
    with pytest.raises(ConfigError, match=None) as info:
        load_recipe("digits", [override, "vae.grad_accum=4"] if "batch_size" in override else [override])
    assert message in str(info.value)


def test_bad_key_in_a_recipe_file_names_file_and_key(tmp_path: Path):
    bad = tmp_path / "mine.toml"
    bad.write_text("[unet]\nema_decy = 0.99\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(str(bad))
    assert str(bad) in str(info.value) and "'unet.ema_decy' (did you mean 'unet.ema_decay'?)" in str(
        info.value
    )
    bad.write_text("[optim]\nlr = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'optim'"):
        load_recipe(str(bad))
    bad.write_text("[unet\n")
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(str(bad))
    with pytest.raises(ConfigError, match="shipped: digits"):
        load_recipe("digitz")


def test_cli_reports_config_errors_in_one_line(tmp_path: Path, capsys):
    assert main(["train", "--set", "unet.lrr=1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "latent-ddpm train: error: --set: unknown key 'unet.lrr' (did you mean 'unet.lr'?)"
    assert not (tmp_path / "x").exists()  # nothing was created


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--stage",
        "--config",
        "--set",
        "--out",
        "--resume",
        "--max-steps",
        "--mixed-precision",
        "--cpu",
    ):
        assert flag in out
    assert "accelerate launch" in out
