"""Run ``latent_ddpm.bench.probe`` in fresh processes: cold start and peak RSS per backend and batch size."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Log = Callable[[str], None]


def probe(
    backend: str,
    bundle: Path,
    source: Path | None,
    batch: int,
    guidance: float,
    threads: int,
    timeout_s: float = 1800,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "latent_ddpm.bench.probe",
        "--backend",
        backend,
        "--bundle",
        str(bundle),
        "--batch",
        str(batch),
        "--guidance",
        str(guidance),
        "--threads",
        str(threads),
    ]
    if source is not None:
        cmd += ["--source", str(source)]
    launched = time.time()
    proc = subprocess.run(
        [*cmd, "--launched", repr(launched)], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"backend": backend, "batch": batch, "error": tail}
    return {"backend": backend, **json.loads(proc.stdout.strip().splitlines()[-1])}


def measure(
    bundle: Path, source: Path | None, batches: list[int], guidance: float, threads: int, log: Log
) -> list[dict[str, Any]]:
    rows = []
    for backend in ("runtime", "torch"):
        if backend == "torch" and source is None:
            continue
        for batch in batches:
            row = probe(backend, bundle, source if backend == "torch" else None, batch, guidance, threads)
            rows.append(row)
            if "error" in row:
                log(f"  {backend} batch {batch}: probe failed: {row['error']}")
            else:
                log(
                    f"  {backend:7s} batch {batch:3d}: first step {row['first_step_s']:6.2f} s after launch "
                    f"(imports {row['import_s']:.2f} s), peak RSS {row['peak_rss_mb']:7.0f} MiB"
                )
    return rows
