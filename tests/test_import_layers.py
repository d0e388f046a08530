"""A stage imports only the stages below it and the ground floor (read from the source, nothing is imported).

The pipeline is train -> export -> runtime; demo and the tools (eval, bench) sit on top of what they use.
The ground floor (errors, provenance, file helpers, the extras check, --json output) imports no stage, only itself. Lazy imports inside functions count:
they are still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import latent_ddpm

PACKAGE = Path(latent_ddpm.__file__).parent
GROUND = {"errors", "provenance", "files", "extras", "json_output"}
# stage -> the stages it may import besides the ground floor
BELOW = {
    "runtime": set(),
    "export": {"runtime", "evaluate"},  # the precision gate judges digits with evaluate's classifier
    "train": {"export", "runtime"},
    "demo": {"runtime", "serve"},  # --server: serve's torch-free HTTP client (serve/client.py)
    "serve": {"runtime"},
    "evaluate": {"runtime"},
    "bench": {"train", "export", "runtime", "serve"},
}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.startswith("latent_ddpm.")}


def test_stages_import_only_downward() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        stage = _stage(".".join(rel.parts))
        allowed = {stage} | GROUND | BELOW.get(stage, set())
        if stage in GROUND:
            allowed = GROUND  # e.g. files.py raises errors.py's LatentDDPMError
        elif stage not in BELOW:
            continue  # the top-level command (cli.py, __main__.py) dispatches to every stage
        wrong += [f"{rel}.py imports {m}" for m in sorted(_imports(path)) if _stage(m) not in allowed]
    assert not wrong, "\n".join(wrong)


def test_every_stage_is_placed() -> None:
    stages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert stages <= set(BELOW), f"add {sorted(stages - set(BELOW))} to BELOW"
    assert {p.stem for p in PACKAGE.glob("*.py")} - GROUND <= {"__init__", "__main__", "cli"}
