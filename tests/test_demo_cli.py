"""`latent-ddpm demo` as users start and stop it: refused up front with one line, cleaned up on SIGTERM.

Before: a taken --port or a foreign --host gave Gradio's "Cannot find empty port", a bundle whose scheduler
makes black images started serving them, and SIGTERM (docker stop, systemd) left the scratch folder in /tmp.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bundle_factory import SCHEDULER, make_bundle, rewrite_meta
from demo_server import free_port

pytest.importorskip("gradio")

from latent_ddpm.cli import main  # noqa: E402


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latent-ddpm demo: error: "), err
    return err


def test_a_port_in_use_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _refused(capsys, ["demo", "--port", str(port)])
    assert f"--port {port} is already in use on 127.0.0.1" in err


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("256.1.1.1", "--host '256.1.1.1' is not an IP address or a host name this machine can resolve"),
        ("192.0.2.1", "--host 192.0.2.1 is not an address of this machine"),  # TEST-NET-1, never local
    ],
)
def test_a_bad_host_is_named(capsys: pytest.CaptureFixture[str], host: str, message: str) -> None:
    assert message in _refused(capsys, ["demo", "--host", host, "--port", str(free_port())])


def test_a_bundle_that_would_serve_black_images_is_refused_at_start(tmp_path: Path) -> None:
    """A real process: before, it started serving (black images) and this run would time out."""
    bundle = make_bundle(tmp_path / "b")
    rewrite_meta(
        bundle, scheduler={**SCHEDULER, "beta_schedule": "linear", "beta_start": 0.5, "beta_end": 1.5}
    )
    cmd = [sys.executable, "-m", "latent_ddpm", "demo", "--bundle", str(bundle), "--port", str(free_port())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("latent-ddpm demo: error: bundle.json: scheduler: ")
    assert "every beta must be in (0, 1)" in proc.stderr and proc.stderr.count("\n") == 1


def test_sigterm_stops_the_server_and_removes_its_scratch_folder(tmp_path: Path) -> None:
    """A real `latent-ddpm demo` process and a real SIGTERM; its temporary files go to a private TMPDIR."""
    from gradio_client import Client

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    port = free_port()
    bundle = make_bundle(tmp_path / "b")
    env = {**os.environ, "TMPDIR": str(scratch_root), "GRADIO_TEMP_DIR": str(scratch_root / "gradio")}
    cmd = [sys.executable, "-m", "latent_ddpm", "demo", "--bundle", str(bundle), "--port", str(port)]
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd + ["--threads", "1"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        client.predict("3", 1, "ddim", 2, 0.0, 1.0, 0, api_name="/generate")  # writes into the scratch folder
        (scratch,) = scratch_root.glob("latent-ddpm-demo-*")
        assert any(scratch.iterdir())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not scratch.exists(), f"{scratch} left behind after SIGTERM"
    printed = log.read_text()
    assert "Traceback" not in printed
    # the project's words for a command-line user, not Gradio's advice to Python callers
    assert f"Demo running at http://127.0.0.1:{port}/" in printed and "start it with --share" in printed
    assert "share=True" not in printed


def test_server_mode_is_refused_in_one_line_when_it_cannot_work(capsys: pytest.CaptureFixture[str]) -> None:
    """--server with --bundle is a contradiction; a --server nobody answers at is named before serving."""
    port = str(free_port())
    err = _refused(capsys, ["demo", "--server", "http://127.0.0.1:9", "--bundle", "digits", "--port", port])
    assert "--server and --bundle exclude each other" in err
    err = _refused(capsys, ["demo", "--server", "127.0.0.1:8000", "--port", port])
    assert "--server must be an http:// or https:// URL, got '127.0.0.1:8000'" in err
    with socket.socket() as closed:  # a port that is certainly not listening
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
        err = _refused(capsys, ["demo", "--server", nobody, "--port", port])
    assert f"cannot reach {nobody}" in err
