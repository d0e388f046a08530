"""TensorRT backend: runs a bundle's serialized plans (``engines/``) with cuda-python, no torch or CuPy.

Opening a model checks its plan against the engine cache key (TensorRT release, GPU, graph sha256) and
loads it; it never builds or writes anything. A stale or missing plan is refused with a BundleError naming
every field that differs and the exact ``latent-ddpm build-engines`` command that rebuilds it
(``tensorrt_plans``). Device buffers are sized once for the profile's largest shapes and reused on every call;
a call copies its inputs in and its outputs out on one CUDA stream.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from latent_ddpm.errors import BackendUnavailableError, BundleError, InputError
from latent_ddpm.runtime.backends import EngineRequest, check_feed
from latent_ddpm.runtime.backends.tensorrt_cuda import (
    DeviceBuffer,
    Stream,
    cuda_check,
    environment,
    import_cudart,
    import_tensorrt,
    trt_logger,
)
from latent_ddpm.runtime.backends.tensorrt_manifest import EngineRecord, plan_file
from latent_ddpm.runtime.backends.tensorrt_plans import Plans
from latent_ddpm.runtime.bundle import ENGINES_DIR, Bundle, ModelFile


def _numpy_dtypes(trt: Any) -> dict[Any, str]:
    names = {"float32": "float32", "float16": "float16", "int32": "int32", "int64": "int64"}
    return {getattr(trt, attr): np_name for attr, np_name in names.items() if hasattr(trt, attr)}


class TensorRTEngine:
    backend = "tensorrt"

    def __init__(self, bundle: Bundle, model: ModelFile) -> None:
        self.model = model
        self._trt, self._cudart = import_tensorrt(), import_cudart()
        self._env = environment(self._trt, self._cudart)
        self._plan = f"{ENGINES_DIR}/{plan_file(model.role)}"
        self._plans = Plans(bundle, self._env)
        record, plan = self._plans.load(model)
        engine = self._deserialize(plan)
        if engine is None:
            # The key matched but TensorRT still refused the plan (e.g. a library swapped under the same
            # version string): only a forced rebuild helps, as build-engines keeps plans whose key matches.
            raise BundleError(
                f"{self._plan}: TensorRT {self._env.tensorrt_version} cannot deserialize it "
                f"({trt_logger(self._trt).take_errors()}); rebuild it with: {self._plans.command(force=True)}"
            )
        self._engine, self._record = engine, record
        self._lock = threading.Lock()
        self._buffers: dict[str, DeviceBuffer] = {}
        self._stream: Stream | None = None
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailableError(
                f"{self._plan}: TensorRT could not create an execution context (GPU memory?)"
            )
        self._check_io()
        self._allocate()

    @property
    def providers(self) -> list[str]:
        env = self._env
        return [
            f"TensorRT {env.tensorrt_version} {self._record.fields.get('precision')} on {env.device_name} "
            f"(sm {env.compute_capability_str})"
        ]

    @property
    def record(self) -> EngineRecord:
        """The manifest entry of the loaded plan (its key and the fields it was built for)."""
        return self._record

    def _deserialize(self, plan: bytes) -> Any:
        trt_logger(self._trt).take_errors()
        self._runtime = self._trt.Runtime(trt_logger(self._trt))  # must outlive the engine
        try:
            return self._runtime.deserialize_cuda_engine(plan)
        except Exception:  # some TensorRT releases raise instead of returning None; both mean "not this plan"
            return None

    # ------------------------------------------------------------------ set-up

    def _check_io(self) -> None:
        trt, engine = self._trt, self._engine
        dtypes = _numpy_dtypes(trt)
        io = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            io[name] = (mode, dtypes.get(engine.get_tensor_dtype(name), str(engine.get_tensor_dtype(name))))
        declared = {s.name: ("input", s.dtype) for s in self.model.inputs}
        declared |= {s.name: ("output", s.dtype) for s in self.model.outputs}
        if io != declared:
            raise BundleError(
                f"{self._plan}: the engine's tensors {sorted(io.items())} differ from bundle.json's "
                f"{sorted(declared.items())}; rebuild it with: {self._plans.command(force=True)}"
            )
        self._dtypes = {name: np.dtype(dtype) for name, (_, dtype) in io.items()}
        self._profile = {
            s.name: tuple(
                tuple(int(d) for d in shape) for shape in engine.get_tensor_profile_shape(s.name, 0)
            )
            for s in self.model.inputs
        }

    def _allocate(self) -> None:
        """Buffers for the profile's largest shapes, allocated once; every later call reuses them."""
        cudart, context = self._cudart, self._context
        for spec in self.model.inputs:
            if not context.set_input_shape(spec.name, self._profile[spec.name][2]):
                raise BundleError(f"{self._plan}: TensorRT refused its own max shape for {spec.name!r}")
        shapes = {s.name: self._profile[s.name][2] for s in self.model.inputs}
        shapes |= {s.name: tuple(context.get_tensor_shape(s.name)) for s in self.model.outputs}
        self._stream = Stream(cudart)
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize
            self._buffers[name] = DeviceBuffer(cudart, nbytes, f"{self._plan} {name}")
            if not context.set_tensor_address(name, self._buffers[name].ptr):
                raise BackendUnavailableError(
                    f"{self._plan}: TensorRT refused the buffer address of {name!r}"
                )

    # ------------------------------------------------------------------ running

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(self.model, feed)
        for spec in self.model.inputs:
            lo, _, hi = self._profile[spec.name]
            check_in_profile(self._plan, self.model.role, spec.name, feed[spec.name].shape, lo, hi)
        with self._lock:
            return self._run_locked(feed)

    def _run_locked(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, context, stream = self._cudart, self._context, self._stream
        assert stream is not None
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        staged = []  # host arrays must stay alive until the stream is synchronised
        for spec in self.model.inputs:
            host = np.ascontiguousarray(feed[spec.name])
            staged.append(host)
            if not context.set_input_shape(spec.name, host.shape):
                raise InputError(
                    f"{self._plan}: TensorRT rejected input {spec.name!r} of shape {list(host.shape)}"
                )
            buf = self._buffers[spec.name]
            cuda_check(
                cudart,
                cudart.cudaMemcpyAsync(buf.ptr, host.ctypes.data, host.nbytes, h2d, stream.handle),
                f"copy of {spec.name!r} to the GPU",
            )
        if not context.execute_async_v3(int(stream)):
            stream.synchronize()
            raise BackendUnavailableError(
                f"{self._plan}: TensorRT execution failed ({trt_logger(self._trt).take_errors()})"
            )
        outputs = {}
        for spec in self.model.outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            out = np.empty(shape, dtype=self._dtypes[spec.name])
            cuda_check(
                cudart,
                cudart.cudaMemcpyAsync(
                    out.ctypes.data, self._buffers[spec.name].ptr, out.nbytes, d2h, stream.handle
                ),
                f"copy of {spec.name!r} from the GPU",
            )
            outputs[spec.name] = out
        stream.synchronize()
        del staged
        return outputs

    def close(self) -> None:
        """Free the device buffers and the stream now instead of at garbage collection."""
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        if self._stream is not None:
            self._stream.destroy()
            self._stream = None


def open_engine(r: EngineRequest) -> TensorRTEngine:
    """``threads`` and ``precision`` go unused: TensorRT runs on the GPU, in the precision its plans were
    built with. It honours no engine option."""
    r.options.check("tensorrt", ())
    if r.providers:
        raise InputError(
            f"providers={list(r.providers)} selects ONNX Runtime execution providers; the tensorrt backend takes none "
            f"(for ONNX Runtime's TensorRT provider use backend='onnxruntime', providers=['TensorrtExecutionProvider'])"
        )
    return TensorRTEngine(r.bundle, r.model)


def check_in_profile(
    plan_name: str, role: str, input_name: str, shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]
) -> None:
    """InputError naming the axis when ``shape`` is outside the engine's profile [lo, hi] (read from the plan)."""
    for axis, (got, a, b) in enumerate(zip(shape, lo, hi, strict=True)):
        if a <= got <= b:
            continue
        if axis == 0:
            guided = (
                " (with classifier-free guidance the U-Net sees twice the number of images)"
                if role == "unet"
                else ""
            )
            raise InputError(
                f"{plan_name}: input {input_name!r} has batch {got}, but the engine was built for batches {a}..{b}"
                f"{guided}; make fewer images per call or rebuild with latent-ddpm build-engines BUNDLE --max-batch N"
            )
        raise InputError(
            f"{plan_name}: input {input_name!r} has shape {list(shape)}, but the engine takes {list(lo)}..{list(hi)}"
        )
