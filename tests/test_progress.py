"""The progress bar: redrawn in place on a terminal, whole lines (throttled) in a log."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from latent_ddpm.runtime.progress import ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    out = Terminal()
    with ProgressBar(total=3, desc="denoising", stream=out, interval=0) as bar:
        for _ in range(3):
            bar.update()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")
    assert "denoising |" in text and "3/3" in text


def test_a_log_gets_whole_lines_and_never_a_carriage_return() -> None:
    out = io.StringIO()  # not a TTY
    with ProgressBar(total=4, desc="vae", stream=out, interval=0) as bar:
        for step in range(4):
            bar.set_postfix(loss=f"{1 / (step + 1):.2f}")
            bar.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split("| ")[1].split(" ")[0] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert lines[-1].endswith("loss=0.25")


def test_a_log_is_throttled_to_the_first_and_the_last_line() -> None:
    out = io.StringIO()
    with ProgressBar(total=1000, desc="unet", stream=out, interval=3600.0) as bar:
        for _ in range(1000):
            bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "1/1000" in lines[0] and "1000/1000" in lines[1]


def test_stopped_early_the_last_count_is_still_logged() -> None:
    out = io.StringIO()
    with ProgressBar(total=100, desc="unet", stream=out, interval=3600.0, initial=10) as bar:
        for _ in range(5):
            bar.update()
    assert out.getvalue().splitlines()[-1].split("| ")[1].startswith("15/100")


def test_disabled_and_unused_bars_print_nothing() -> None:
    for bar in (
        ProgressBar(total=3, stream=(out := io.StringIO()), disable=True),
        ProgressBar(3, stream=out),
    ):
        with bar:
            if bar.disable:
                bar.update(3)
    assert out.getvalue() == ""


def test_sample_into_a_log(tmp_path: Path) -> None:
    """The command as a CI job runs it: stderr is a pipe, so progress comes as lines, without \\r."""
    proc = subprocess.run(
        [sys.executable, "-m", "latent_ddpm", "sample", "--num", "1", "--steps", "3", "--threads", "1"]
        + ["--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("denoising |")]
    assert progress and "3/3" in progress[-1]


def test_a_message_takes_the_terminal_line_and_the_bar_comes_back_below_it() -> None:
    out = Terminal()
    with ProgressBar(total=3, desc="export", stream=out, interval=3600.0) as bar:
        bar.update()
        bar.clear()
        out.write("a message\n")
        bar.update()  # drawn at once, whatever the interval
    after = out.getvalue().split("a message\n")[1]
    assert out.getvalue().count("\r\x1b[K") == 1 and after.startswith("\rexport |") and "2/3" in after
