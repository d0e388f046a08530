"""Commands whose extra is not installed say which one to install, before doing any work.

Each case runs the real CLI in a fresh interpreter where one of the extra's modules cannot be imported
(the import blocker of test_runtime_torch_free.py), and checks the one-line message, the exit status and
that nothing was written.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

from latent_ddpm.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]


def _run_without(blocked: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == {blocked!r}:
                    raise ImportError(f"{{name}} is blocked")
                return None
        sys.meta_path.insert(0, Blocker())
        from latent_ddpm.cli import main
        sys.exit(main({argv!r}))
        """
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


CASES = {
    "export": ("onnx", lambda src, out: ["export", str(src), str(out)], "export"),
    "train": ("accelerate", lambda src, out: ["train", "--config", "tiny", "--out", str(out)], "train"),
    "quantize": ("onnx", lambda src, out: ["quantize", str(src), str(out)], "export"),
    "bench": ("psutil", lambda src, out: ["bench", "--models", "digits", "--out", str(out)], "bench"),
    "serve": ("ray", lambda src, out: ["serve", "--bundle", str(src)], "serve"),
}


@pytest.mark.parametrize("command", sorted(CASES))
def test_missing_extra_is_named_before_any_work(command: str, tmp_path: Path) -> None:
    from bundle_factory import make_bundle

    blocked, argv, extra = CASES[command]
    src = make_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    proc = _run_without(blocked, argv(src, out), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert f"`latent-ddpm {command}` needs {blocked}" in err
    assert f"pip install 'latent-ddpm[{extra}]'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # nothing written, not even OUT


def test_extras_match_pyproject() -> None:
    """EXTRAS lists import names; here each is the distribution pyproject.toml's extra installs."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def names(extra: str) -> set[str]:
        found = set()
        for requirement in extras[extra]:
            if m := re.fullmatch(r"latent-ddpm\[(.+)\]", requirement):
                found |= {n for e in m.group(1).split(",") for n in names(e)}
            else:
                found.add(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
        return found

    for extra, modules in EXTRAS.items():
        assert set(modules) == names(extra), extra
