"""What the package ships names no folder of the machine that made it (a bundle's source, a report's paths)."""

from __future__ import annotations

from pathlib import Path

import latent_ddpm

PACKAGE = Path(latent_ddpm.__file__).parent
MACHINE_PREFIXES = ("/work/", "/home/", "/tmp/", "/root/", "/Users/", str(PACKAGE.parent))


def _shipped_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_no_shipped_file_records_an_absolute_path_of_this_machine() -> None:
    found = {
        path.relative_to(PACKAGE).as_posix(): [p for p in MACHINE_PREFIXES if p.encode() in path.read_bytes()]
        for path in _shipped_files()
    }
    assert {name: prefixes for name, prefixes in found.items() if prefixes} == {}
    assert {"data/digits/bundle.json", "data/digits/README.md", "data/digits/unet.onnx"} <= set(found)
