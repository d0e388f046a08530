"""What the numbers were measured on, and the fp32 matmul peak that achieved GFLOP/s is compared with.

The peak comes from ONNX Runtime's own MatMul (MLAS) on a 2048x2048 product in a one-node graph: on
AMD CPUs it is the fastest fp32 GEMM available here (torch's ``a @ b`` goes through MKL, which takes a
slow path on non-Intel CPUs), so a fraction of this peak is an honest ceiling, not a flattering one.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import numpy as np

from latent_ddpm.bench.stats import Samples, time_calls

LIBRARIES = ("latent-ddpm", "numpy", "onnxruntime", "onnx", "torch", "diffusers", "psutil", "matplotlib")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD extensions that decide which kernels run (AVX2, AVX-512, VNNI, BF16, AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": usable_cores(),
        "platform": platform.platform(),
        "load_average_1_5_15": load_average(),
        "versions": library_versions(),
    }


def _matmul_session(n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul_peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        initializer=[numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def matmul_peak(threads: int, n: int = 2048, warmup: int = 2, runs: int = 7) -> dict[str, Any]:
    """Measured fp32 GFLOP/s of ONNX Runtime's MatMul on an n x n x n product (2 n^3 FLOPs per call)."""
    session = _matmul_session(n, threads)
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    seconds: Samples = time_calls(lambda: session.run(None, {"a": a}), warmup, runs)
    flops = 2.0 * n**3
    return {
        "kernel": f"onnxruntime MatMul {n}x{n}x{n} fp32",
        "threads": threads,
        "gflops": flops / seconds.median / 1e9,
        "gflops_best": flops / min(seconds.values) / 1e9,
        "seconds": seconds.to_json(),
    }


def torch_matmul_gflops(threads: int, n: int = 2048, warmup: int = 2, runs: int = 5) -> float:
    """torch's ``a @ b`` on the same product: not the peak, but it explains the eager reference's speed."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = time_calls(lambda: a @ b, warmup, runs)
    return 2.0 * n**3 / seconds.median / 1e9
