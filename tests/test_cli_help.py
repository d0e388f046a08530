"""The top-level command: one help layout, one default text per flag, the flags every command shares."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from latent_ddpm.cli import COMMANDS, build_parser, main


def _help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # one line per flag, whatever the terminal
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _flag_lines(text: str) -> dict[str, str]:
    """--flag -> its help line (COLUMNS=200 keeps each on one line)."""
    lines = {}
    for line in text.splitlines():
        m = re.match(r"\s+(?:-\w, )?(--[\w-]+)", line)
        if m:
            lines[m.group(1)] = line
    return lines


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_states_its_default_at_most_once(command, capsys, monkeypatch) -> None:
    text = _help(capsys, monkeypatch, command)
    lines = _flag_lines(text)
    assert "--verbose" in lines and "--quiet" in lines  # on every command, from one definition
    for line in lines.values():
        assert line.lower().count("default") <= 1, line
        for meaningless in ("(default: None)", "(default: False)", "(default: True)", "(default: [])"):
            assert meaningless not in line, line


def test_switches_read_as_what_they_do(capsys, monkeypatch) -> None:
    lines = _flag_lines(_help(capsys, monkeypatch, "export"))
    assert "True" not in lines["--no-validate"] and "skip the validation gate" in lines["--no-validate"]
    assert "(default: 17)" in lines["--opset"]  # a value default is still shown


def test_train_help_keeps_its_examples_on_their_own_lines(capsys, monkeypatch) -> None:
    text = _help(capsys, monkeypatch, "train")
    accelerate = next(i for i, line in enumerate(text.splitlines()) if "accelerate launch" in line)
    torchrun = next(i for i, line in enumerate(text.splitlines()) if "torch.distributed.run" in line)
    assert torchrun - accelerate == 2  # a caption between them, not one run-on line
    assert "torch.distributed.run" not in text.splitlines()[accelerate]


def test_no_command_prints_the_help_and_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "latent_ddpm"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "usage: latent-ddpm" in proc.stderr
    for command in COMMANDS:
        assert command in proc.stderr  # the list of commands, not only "arguments are required"


def test_verbose_and_quiet_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--verbose", "--quiet"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("loudness, shown", [("--verbose", True), ("--quiet", False), (None, False)])
def test_verbose_sets_the_logging_level(loudness, shown, tmp_path) -> None:
    """A fresh process each, as a user runs it; --num 0 is refused before any work, after logging is set."""
    argv = [sys.executable, "-m", "latent_ddpm", "sample", "--num", "0", "--out", str(tmp_path / "x.png")]
    proc = subprocess.run(
        argv + ([loudness] if loudness else []), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "--num" in proc.stderr
    assert ("debug latent_ddpm: latent-ddpm sample with" in proc.stderr) == shown
    assert not (tmp_path / "x.png").exists()
