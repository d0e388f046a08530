"""ONNX Runtime backend: CPU by default; CUDA / TensorRT execution providers with onnxruntime-gpu."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latent_ddpm.errors import BackendUnavailableError, BundleError
from latent_ddpm.runtime.backends import check_feed
from latent_ddpm.runtime.bundle import Bundle, ModelFile
from latent_ddpm.runtime.limits import check_threads

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailableError(
            "the onnxruntime backend needs ONNX Runtime: pip install 'latent-ddpm[cpu]' (or '[gpu]' for CUDA)"
        ) from None
    return ort


def available_providers() -> list[str]:
    return list(_import_ort().get_available_providers())


class OnnxRuntimeEngine:
    backend = "onnxruntime"

    def __init__(
        self,
        model: ModelFile,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        threads = check_threads(threads)
        ort = _import_ort()
        available = ort.get_available_providers()
        chosen = list(providers) if providers else ["CPUExecutionProvider"]
        unknown = [p for p in chosen if p not in available]
        if unknown:
            raise BackendUnavailableError(
                f"execution provider(s) {', '.join(unknown)} not available in this onnxruntime "
                f"(available: {', '.join(available)}); CUDA/TensorRT providers need 'latent-ddpm[gpu]'"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model.path), sess_options=options, providers=chosen)
        except Exception as exc:  # ORT raises its own exception types with long C++ messages
            raise BundleError(f"{model.path.name}: ONNX Runtime cannot load it: {_first_line(exc)}") from None
        self.model = model
        self._check_graph_matches_spec()
        self._output_names = [o.name for o in model.outputs]

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def _check_graph_matches_spec(self) -> None:
        graph_inputs = {i.name: i for i in self._session.get_inputs()}
        for spec in self.model.inputs:
            node = graph_inputs.get(spec.name)
            if node is None:
                raise BundleError(
                    f"{self.model.path.name}: bundle.json declares input {spec.name!r}, the ONNX graph has "
                    f"{sorted(graph_inputs)}"
                )
            dtype = _ORT_TYPES.get(node.type, node.type)
            if dtype != spec.dtype or len(node.shape) != len(spec.shape):
                raise BundleError(
                    f"{self.model.path.name}: input {spec.name!r} is {dtype} rank {len(node.shape)} in the graph, "
                    f"{spec.dtype} rank {len(spec.shape)} in bundle.json"
                )
        undeclared = sorted(set(graph_inputs) - {s.name for s in self.model.inputs})
        if undeclared:
            raise BundleError(
                f"{self.model.path.name}: graph inputs {undeclared} are not declared in bundle.json"
            )
        graph_outputs = {o.name for o in self._session.get_outputs()}
        for spec in self.model.outputs:
            if spec.name not in graph_outputs:
                raise BundleError(
                    f"{self.model.path.name}: bundle.json declares output {spec.name!r}, the ONNX graph has "
                    f"{sorted(graph_outputs)}"
                )

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(self.model, feed)
        try:
            outputs = self._session.run(self._output_names, feed)
        except Exception as exc:  # ORT's own exception types; the feed matched the spec, so the graph failed
            raise BundleError(
                f"{self.model.path.name}: ONNX Runtime failed to run it: {_first_line(exc)}"
            ) from None
        return dict(zip(self._output_names, outputs, strict=True))


def _first_line(exc: Exception) -> str:
    """ORT's message without the "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :" preamble."""
    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return line.rsplit(" : ", 1)[-1] if line.startswith("[ONNXRuntimeError]") else line


def open_engine(
    bundle: Bundle, model: ModelFile, providers: Sequence[str] | None = None, threads: int | None = None
) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(model, providers=providers, threads=threads)
