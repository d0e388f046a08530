"""OpenVINO backend (CPU): the bundle's ONNX graphs, compiled once per input shape.

OpenVINO reads the ONNX files as they are (its ONNX frontend, in memory: nothing is converted or written
near the bundle). A graph compiled for one fixed shape ran 1.5-2.5x faster than ONNX Runtime on the digits
U-Net, and no faster with dynamic shapes (issue 13's probe), so every (batch, height, width) the engine is
called with gets its own compiled model, kept in a ``ShapeCache`` of ``EngineOptions.max_shapes`` (default
4: a sampling run uses one shape per graph, a server a few batch sizes). Each entry holds its own repacked
weights and buffers, about twice the graph's size (+55 MB per shape for the 26 MB digits U-Net), so for a
1 GB U-Net pass a smaller bound. Compiling takes seconds for a U-Net;
``EngineOptions.cache_dir`` (outside the bundle, only when the caller passes one) lets OpenVINO reuse
compiled blobs across processes.

Precision: OpenVINO's CPU plugin runs float graphs in bf16 on CPUs that have it unless told otherwise, so
the inference precision is always set explicitly: f32 by default, bf16 only when asked, and only for a
bundle whose bf16 gate passed (``backends.check_precision``) on a CPU with native bf16.

Thread safety: each call borrows an infer request from a per-shape pool (a request holds the intermediate
buffers of one inference) and returns it afterwards, so concurrent calls never share one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.errors import BackendUnavailableError, BundleError, InputError
from latent_ddpm.provenance import cpu_flags
from latent_ddpm.runtime.backends import EngineOptions, EngineRequest, check_feed, check_graph_matches_spec
from latent_ddpm.runtime.backends.shape_cache import ShapeCache
from latent_ddpm.runtime.bundle import Bundle, ModelFile

ENGINE_OPTIONS = ("max_shapes", "cache_dir")
# Our precision names -> OpenVINO's INFERENCE_PRECISION_HINT values.
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16"}
# CPU flags (as /proc/cpuinfo spells them) that mean bf16 arithmetic in hardware rather than emulated.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError(
            "the openvino backend needs OpenVINO: pip install 'latent-ddpm[openvino]'"
        ) from None
    return openvino


def native_bf16() -> list[str]:
    """The CPU's native bf16 flags; empty where bf16 would be emulated (slower and not what was validated)."""
    flags = set(cpu_flags())
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def check_native_bf16() -> None:
    if not native_bf16():
        raise BackendUnavailableError(
            f"bf16 needs a CPU with native bf16 ({' or '.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo); "
            "this one has neither: use precision fp32"
        )


class _Compiled:
    """One compiled model and its pool of idle infer requests."""

    def __init__(self, compiled: Any) -> None:
        self.model = compiled
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def infer(self, feed: dict[str, np.ndarray], output_names: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            request = self._idle.pop() if self._idle else self.model.create_infer_request()
        try:
            # share_outputs=False: the results are copies, so the request can serve the next call at once.
            result = request.infer(feed, share_inputs=True, share_outputs=False)
            return {name: result[name] for name in output_names}
        finally:
            with self._lock:
                self._idle.append(request)


class OpenVinoEngine:
    backend = "openvino"

    def __init__(
        self,
        bundle: Bundle,
        model: ModelFile,
        threads: int | None = None,
        precision: str = "fp32",
        options: EngineOptions | None = None,
    ) -> None:
        ov = import_openvino()
        self.options = options = options or EngineOptions()
        options.check(self.backend, ENGINE_OPTIONS)
        if precision not in INFERENCE_PRECISION:
            raise InputError(
                f"precision {precision!r} is not one the openvino backend runs ({', '.join(INFERENCE_PRECISION)})"
            )
        if precision == "bf16":
            check_native_bf16()
        self.model, self.precision = model, precision
        self.config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if options.cache_dir is not None:
            self.config["CACHE_DIR"] = str(_outside(bundle, Path(options.cache_dir)))
        self._core = ov.Core()
        try:
            self._graph = self._core.read_model(str(model.path))
        except Exception as exc:  # OpenVINO raises RuntimeError with a long C++ trace
            raise BundleError(
                f"{model.path.name}: OpenVINO cannot read it: {str(exc).strip().splitlines()[0]}"
            ) from None
        inputs = {}
        for port in self._graph.inputs:
            names = port.get_names()
            name = next((s.name for s in model.inputs if s.name in names), port.get_any_name())
            rank = port.get_partial_shape().rank
            inputs[name] = (
                np.dtype(port.get_element_type().to_dtype()).name,
                rank.get_length() if rank.is_static else -1,
            )
        check_graph_matches_spec(model, inputs, {n for port in self._graph.outputs for n in port.get_names()})
        self._output_names = [o.name for o in model.outputs]
        self._compiled: ShapeCache[tuple[tuple[str, int], ...], _Compiled] = ShapeCache(options.max_shapes)

    @property
    def providers(self) -> list[str]:
        return [f"OpenVINO CPU ({INFERENCE_PRECISION[self.precision]})"]

    @property
    def cached_shapes(self) -> list[tuple[tuple[str, int], ...]]:
        """The dynamic-axis sizes of the compiled models held, least recently used first."""
        return self._compiled.keys()

    def compiled_model(self, feed: dict[str, np.ndarray]) -> Any:
        """The ``openvino.CompiledModel`` for the shapes of ``feed`` (compiled on first use)."""
        return self._entry(feed).model

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._entry(feed).infer(feed, self._output_names)

    def _entry(self, feed: dict[str, np.ndarray]) -> _Compiled:
        dims = check_feed(self.model, feed)
        return self._compiled.get(dims, lambda: self._compile(feed, dims))

    def _compile(self, feed: dict[str, np.ndarray], dims: tuple[tuple[str, int], ...]) -> _Compiled:
        graph = self._graph.clone()
        try:
            graph.reshape({name: list(value.shape) for name, value in feed.items()})
            return _Compiled(self._core.compile_model(graph, "CPU", self.config))
        except Exception as exc:  # RuntimeError with a C++ trace; name the file and the shape instead
            shape = ", ".join(f"{name}={size}" for name, size in dims)
            raise BundleError(
                f"{self.model.path.name}: OpenVINO cannot compile it for {shape}: "
                f"{str(exc).strip().splitlines()[0]}"
            ) from None


def _outside(bundle: Bundle, cache_dir: Path) -> Path:
    resolved = cache_dir.expanduser().resolve()
    if resolved.is_relative_to(bundle.root):
        raise InputError(
            f"cache_dir {cache_dir} is inside bundle {bundle.root}; loading a bundle never writes into it: "
            "choose a folder outside"
        )
    return resolved


def open_engine(r: EngineRequest) -> OpenVinoEngine:
    if r.providers:
        raise InputError(
            f"providers={list(r.providers)} selects ONNX Runtime execution providers; the openvino backend "
            "takes none (it runs on the CPU)"
        )
    return OpenVinoEngine(r.bundle, r.model, threads=r.threads, precision=r.precision, options=r.options)
