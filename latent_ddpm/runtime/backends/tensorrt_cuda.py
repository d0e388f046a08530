"""TensorRT and CUDA (through NVIDIA's cuda-python) as the tensorrt backend sees them: imported on demand,
with errors that say what to install or what is missing, CUDA's (error, result) tuples checked, and
TensorRT's log kept for our error messages.

No torch, no CuPy: device memory and the stream are plain cudaMalloc / cudaStreamCreate handles.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from latent_ddpm.errors import BackendUnavailableError
from latent_ddpm.runtime.backends.tensorrt_cache import Environment

EXTRA = "pip install 'latent-ddpm[tensorrt]'"
log = logging.getLogger("latent_ddpm.tensorrt")


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer cannot be loaded
        raise BackendUnavailableError(
            f"TensorRT engines need NVIDIA TensorRT and cuda-python: {EXTRA} (import tensorrt failed: {exc})"
        ) from None
    return tensorrt


def import_cudart() -> ModuleType:
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (cuda-python >= 12.6), else ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendUnavailableError(
                f"TensorRT engines need NVIDIA's cuda-python for device memory: {EXTRA} ({exc})"
            ) from None
    return cudart


_LOGGERS: dict[int, tuple[ModuleType, Any]] = {}


def trt_logger(trt: ModuleType) -> Any:
    """One ILogger per process (TensorRT warns when builder and runtime get different ones) that keeps the
    last errors, so they can go into our exception message instead of only onto stderr."""
    if id(trt) not in _LOGGERS:

        class _Logger(trt.ILogger):  # type: ignore[name-defined]  # TensorRT's own base class
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                level = int(severity)
                if level <= int(trt.ILogger.Severity.ERROR):
                    self.errors = [*self.errors[-9:], msg]
                    log.error("TensorRT: %s", msg)
                elif level == int(trt.ILogger.Severity.WARNING):
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

            def take_errors(self) -> str:
                text, self.errors = " | ".join(self.errors), []
                return text or "no error message"

        _LOGGERS[id(trt)] = (trt, _Logger())  # the module is kept so its id is never reused
    return _LOGGERS[id(trt)][1]


def cuda_check(cudart: Any, result: Any, what: str) -> Any:
    """Unwrap a cuda-python call's ``(error, *values)``; raise BackendUnavailableError naming the call on error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendUnavailableError(f"CUDA call {what} failed: {error_name(cudart, err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def error_name(cudart: Any, err: Any) -> str:
    try:
        code, name = cudart.cudaGetErrorName(err)
        text = name.decode() if isinstance(name, bytes) else str(name)
        return text if code == cudart.cudaError_t.cudaSuccess else str(err)
    except Exception:  # naming the error must never hide it
        return str(err)


def current_device(cudart: Any) -> int:
    """The CUDA device this process uses; a clear error when there is none (TensorRT without a GPU)."""
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        why = error_name(cudart, err) if err != cudart.cudaError_t.cudaSuccess else "no devices"
        raise BackendUnavailableError(
            f"the tensorrt backend needs an NVIDIA GPU, and CUDA reports none usable ({why}); check the driver and "
            f"CUDA_VISIBLE_DEVICES, or use backend='onnxruntime'"
        )
    return int(cuda_check(cudart, cudart.cudaGetDevice(), "cudaGetDevice"))


def environment(trt: ModuleType, cudart: Any) -> Environment:
    device = current_device(cudart)
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
    return Environment(
        tensorrt_version=str(trt.__version__),
        device_name=str(name).strip(),
        compute_capability=(int(props.major), int(props.minor)),
    )


class DeviceBuffer:
    """One cudaMalloc allocation, freed by ``free`` (or, as a last resort, when collected)."""

    def __init__(self, cudart: Any, nbytes: int, what: str) -> None:
        self._cudart = cudart
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(
            cuda_check(cudart, cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes}) for {what}")
        )

    def free(self) -> None:
        if self.ptr:
            self._cudart.cudaFree(self.ptr)
            self.ptr = 0

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:  # interpreter shutdown: the driver may be gone already
            pass


class Stream:
    def __init__(self, cudart: Any) -> None:
        self._cudart = cudart
        self.handle = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

    def __int__(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        cuda_check(self._cudart, self._cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self.handle is not None:
            self._cudart.cudaStreamDestroy(self.handle)
            self.handle = None

    def __del__(self) -> None:
        try:
            self.destroy()
        except Exception:
            pass
