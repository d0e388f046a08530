"""ONNX Runtime backend: CPU by default; CUDA / TensorRT execution providers with onnxruntime-gpu.

Engine options (opt-in, ``EngineOptions``): ``static_shapes`` opens one session per input shape with the
graph's free dimensions fixed by name (``max_shapes`` of them, least recently used dropped), and
``allow_spinning=False`` stops idle intra-op threads spin-waiting. docs/benchmarks/NOTES.md has the A/B
results that made them options rather than defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from latent_ddpm.errors import BackendUnavailableError, BundleError
from latent_ddpm.runtime.backends import EngineOptions, EngineRequest, check_feed, check_graph_matches_spec
from latent_ddpm.runtime.backends.shape_cache import ShapeCache
from latent_ddpm.runtime.bundle import ModelFile

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}
ENGINE_OPTIONS = ("static_shapes", "allow_spinning", "max_shapes")


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailableError(
            "the onnxruntime backend needs ONNX Runtime: pip install 'latent-ddpm[cpu]' (or '[gpu]' for CUDA)"
        ) from None
    return ort


class OnnxRuntimeEngine:
    backend = "onnxruntime"

    def __init__(
        self,
        model: ModelFile,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        self._ort = ort = _import_ort()
        self.options = options = options or EngineOptions()
        options.check(self.backend, ENGINE_OPTIONS)
        available = ort.get_available_providers()
        self._chosen = chosen = list(providers) if providers else ["CPUExecutionProvider"]
        unknown = [p for p in chosen if p not in available]
        if unknown:
            raise BackendUnavailableError(
                f"execution provider(s) {', '.join(unknown)} not available in this onnxruntime "
                f"(available: {', '.join(available)}); CUDA/TensorRT providers need 'latent-ddpm[gpu]'"
            )
        self.model = model
        self._threads = threads
        session = self._open()
        check_graph_matches_spec(
            model,
            {i.name: (_ORT_TYPES.get(i.type, i.type), len(i.shape)) for i in session.get_inputs()},
            {o.name for o in session.get_outputs()},
        )
        self._providers = list(session.get_providers())
        self._output_names = [o.name for o in model.outputs]
        # Static mode keeps only the specialised sessions: the dynamic one served to check the graph.
        self._session = None if options.static_shapes else session
        self._static: ShapeCache[tuple[tuple[str, int], ...], Any] = ShapeCache(options.max_shapes)

    def _open(self, dims: Sequence[tuple[str, int]] = ()) -> Any:
        ort = self._ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads:
            so.intra_op_num_threads = int(self._threads)
        if not self.options.allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for name, size in dims:
            so.add_free_dimension_override_by_name(name, size)
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(str(self.model.path), sess_options=so, providers=self._chosen)
        except Exception as exc:  # ORT raises its own exception types with long C++ messages
            raise BundleError(
                f"{self.model.path.name}: ONNX Runtime cannot load it: {_first_line(exc)}"
            ) from None

    @property
    def providers(self) -> list[str]:
        return list(self._providers)

    @property
    def cached_shapes(self) -> list[tuple[tuple[str, int], ...]]:
        """The dynamic-axis sizes of the specialised sessions held (static_shapes), least recent first."""
        return self._static.keys()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dims = check_feed(self.model, feed)
        session = self._session
        if session is None:
            session = self._static.get(dims, lambda: self._open(dims))
        try:
            outputs = session.run(self._output_names, feed)
        except Exception as exc:  # ORT's own exception types; the feed matched the spec, so the graph failed
            raise BundleError(
                f"{self.model.path.name}: ONNX Runtime failed to run it: {_first_line(exc)}"
            ) from None
        return dict(zip(self._output_names, outputs, strict=True))


def _first_line(exc: Exception) -> str:
    """ORT's message without the "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :" preamble."""
    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return line.rsplit(" : ", 1)[-1] if line.startswith("[ONNXRuntimeError]") else line


def open_engine(r: EngineRequest) -> OnnxRuntimeEngine:
    """``precision`` is checked by ``backends.open_engine``: ONNX Runtime runs the graphs as they are."""
    return OnnxRuntimeEngine(r.model, providers=r.providers, threads=r.threads, options=r.options)
