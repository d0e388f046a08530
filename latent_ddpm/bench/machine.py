"""The fp32 matmul peak that achieved GFLOP/s is compared with (what the machine is: ``latent_ddpm.provenance``).

The peak comes from ONNX Runtime's own MatMul (MLAS) on a 2048x2048 product in a one-node graph: on
AMD CPUs it is the fastest fp32 GEMM available here (torch's ``a @ b`` goes through MKL, which takes a
slow path on non-Intel CPUs), so a fraction of this peak is an honest ceiling, not a flattering one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latent_ddpm.bench.stats import Samples, time_calls


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
