"""Shared set-up of the serve tests: `latent-ddpm serve` as a real process, and proof it leaves nothing behind.

Every Ray instance the tests start keeps its session under its own short temporary directory (RAY_TMPDIR; Unix
socket paths must stay under 108 bytes, which pytest's tmp_path would exceed), so the processes it started are
exactly those whose command line names that directory; ``assert_no_ray_left`` waits for them to be gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# A loaded 2-core machine takes 30-60 s to start Ray and deploy; these bound every wait generously.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 90
REQUEST_TIMEOUT_S = 180
READY_LINE = "press Ctrl-C to stop"


@contextlib.contextmanager
def ray_tmpdir() -> Iterator[Path]:
    """A fresh RAY_TMPDIR for one Ray instance; on exit, waits until its processes are gone, then deletes it."""
    path = Path(tempfile.mkdtemp(prefix="ldm-ray-", dir="/tmp"))
    try:
        yield path
        assert_no_ray_left(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ray_env(tmpdir: Path) -> dict[str, str]:
    """The environment for a Ray instance (or a process that starts one) under ``tmpdir``, kept offline."""
    return {**os.environ, "RAY_TMPDIR": str(tmpdir), "RAY_USAGE_STATS_ENABLED": "0"}


def processes_under(tmpdir: Path) -> list[str]:
    """'pid command' of every live process whose command line names ``tmpdir`` (raylet, GCS, workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(tmpdir) in cmdline and not cmdline.startswith("grep"):
            found.append(f"{proc.name} {cmdline[:160]}")
    return found


def assert_no_ray_left(tmpdir: Path, timeout_s: float = STOP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := processes_under(tmpdir)) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert not left, "Ray processes left running:\n" + "\n".join(left)


@dataclass
class ServeProcess:
    url: str
    process: subprocess.Popen
    output: list[str]  # every line it printed, stdout and stderr
    returncode: int | None = None  # once stopped


def _pump(stream, lines: list[str], ready: threading.Event) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        if READY_LINE in line or "detached" in line:
            ready.set()


@contextlib.contextmanager
def serve_process(
    args: list[str], tmpdir: Path, port: int, stop_with: int = signal.SIGINT
) -> Iterator[ServeProcess]:
    """``latent-ddpm serve --port PORT ARGS`` until ready; on exit stopped with ``stop_with`` (Ctrl-C's SIGINT,
    or SIGTERM as `docker stop` sends), or killed if it does not stop in time."""
    process = subprocess.Popen(
        [sys.executable, "-m", "latent_ddpm", "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ray_env(tmpdir),
    )
    lines: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_pump, args=(process.stdout, lines, ready), daemon=True).start()
    served = ServeProcess(f"http://127.0.0.1:{port}", process, lines)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(1.0):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("latent-ddpm serve did not start:\n" + "\n".join(lines[-40:]))
        with urllib.request.urlopen(served.url + "/healthz", timeout=REQUEST_TIMEOUT_S) as response:
            assert response.status == 200
        yield served
    finally:
        served.returncode = stop(process, stop_with)


def stop(process: subprocess.Popen, sig: int = signal.SIGINT) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
