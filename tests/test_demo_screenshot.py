"""`python -m latent_ddpm.demo.screenshot`, the README's demo picture, on the tiny emoji stand-in
(``shipped_emoji``): headless Debian chromium picks the model, presses Generate and saves the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_demo_browser import pytestmark as needs_chromium

pytest.importorskip("gradio")
pytest.importorskip("selenium")

from latent_ddpm.demo.screenshot import main  # noqa: E402

pytestmark = [needs_chromium, pytest.mark.usefixtures("shipped_emoji")]


def test_the_readme_picture_with_emoji_picked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo_emoji.png"
    argv = ["--model", "emoji", "--out", str(out), "--threads", "1", "--width", "1200", "--height", "900"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {out}"
    picture = Image.open(out)
    assert picture.size == (1200, 900) and picture.mode in ("RGB", "RGBA")
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporaries left behind
    shown = np.asarray(picture.convert("RGB"), dtype=np.int16)
    saturated = (shown.max(axis=-1) - shown.min(axis=-1)) > 200  # the factory emoji's pure colours
    assert saturated.sum() > 8 * 128 * 128 // 4, "no colour images in the gallery"


def test_an_unknown_model_is_one_line_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model", "cats", "--out", str(tmp_path / "x.png")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "screenshot: error: --model 'cats' is not one of digits, emoji"
    assert main(["--out", str(tmp_path / "missing" / "x.png")]) == 2
    assert "--out must be a .png file in an existing folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_default_model_without_picking_waits_for_the_page(tmp_path: Path) -> None:
    """No model to pick, so nothing waited for the page's script to draw it before pressing Generate."""
    out = tmp_path / "demo.png"
    assert main(["--out", str(out), "--threads", "1", "--width", "1000", "--height", "700"]) == 0
    assert Image.open(out).size == (1000, 700)
