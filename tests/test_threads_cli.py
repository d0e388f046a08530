"""Every command that takes --threads refuses more threads than the machine's usable cores, before any work.

`--threads 1000` kept ONNX Runtime busy creating and spinning 1000 threads for over 90 s; now each command
says how many cores there are, with exit status 2, and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from latent_ddpm.cli import main
from latent_ddpm.runtime.limits import usable_cores


def _commands(tmp: Path) -> dict[str, list[str]]:
    return {
        "sample": ["sample", "--out", str(tmp / "x.png")],
        "demo": ["demo", "--port", "1"],
        "eval": ["eval", "--bundle", str(tmp / "bundle")],
        "bench": ["bench", "--out", str(tmp / "bench")],
        "export": ["export", str(tmp / "src"), str(tmp / "out")],
        "quantize": ["quantize", str(tmp / "bundle"), str(tmp / "out")],
        "train": ["train", "--out", str(tmp / "run")],
    }


@pytest.mark.parametrize("command", ["sample", "demo", "eval", "bench", "export", "quantize", "train"])
def test_more_threads_than_cores_is_refused(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cores = usable_cores()
    argv = _commands(tmp_path)[command] + ["--threads", str(cores + 1)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"latent-ddpm {command}: error: --threads {cores + 1} is more than the {cores} usable cores of this "
        f"machine; more threads only contend (use at most {cores}, or leave it unset for all cores)\n"
    )
    assert list(tmp_path.iterdir()) == []
