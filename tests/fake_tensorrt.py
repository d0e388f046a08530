"""CPU stand-ins for the small part of ``tensorrt`` and ``cuda-python`` that our TensorRT code calls.

CI has no GPU, so without these the engine cache (what build-engines rebuilds or keeps, what the runtime
refuses, manifest writes) and the backend's buffer handling would never run before a user's GPU. They are
test doubles, not TensorRT: a "plan" is JSON holding the ONNX bytes, it "executes" with ONNX Runtime, and
"device memory" is host memory whose bounds every copy checks. They prove our logic; only the GPU tests
prove TensorRT's API.
"""

from __future__ import annotations

import base64
import ctypes
import enum
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort


class Err(enum.Enum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorNoDevice = 100


class MemcpyKind(enum.Enum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


OK = Err.cudaSuccess


class FakeStream:
    count = 0

    def __init__(self) -> None:
        FakeStream.count += 1
        self.value = 0x5000 + FakeStream.count

    def __int__(self) -> int:
        return self.value


def make_cudart(devices: int = 1, name: str = "Fake GPU", cc: tuple[int, int] = (8, 6)) -> ModuleType:
    """cuda-python's ``runtime`` module: (error, value) tuples; allocations tracked so copies are bounds-checked."""
    m = ModuleType("cuda.bindings.runtime")
    m.cudaError_t = Err
    m.cudaMemcpyKind = MemcpyKind
    m.allocations = {}  # device pointer -> the host buffer standing in for it
    m.copies = {"h2d": 0, "d2h": 0}
    m.cudaGetErrorName = lambda e: (OK, e.name.encode())
    m.cudaGetDeviceCount = lambda: (OK, devices) if devices else (Err.cudaErrorNoDevice, 0)
    m.cudaGetDevice = lambda: (OK, 0)
    m.cudaGetDeviceProperties = lambda d: (
        OK,
        SimpleNamespace(name=name.encode() + b"\0\0", major=cc[0], minor=cc[1]),
    )

    def malloc(n: int) -> tuple[Err, int]:
        buf = ctypes.create_string_buffer(n)
        m.allocations[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)

    def free(ptr: int) -> tuple[Err]:
        return (OK,) if m.allocations.pop(ptr, None) is not None else (Err.cudaErrorInvalidValue,)

    def memcpy(dst: int, src: int, n: int, kind: MemcpyKind, stream: FakeStream) -> tuple[Err]:
        device = dst if kind is MemcpyKind.cudaMemcpyHostToDevice else src
        if not isinstance(stream, FakeStream) or not fits(m, device, n):
            return (Err.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, n)
        m.copies["h2d" if kind is MemcpyKind.cudaMemcpyHostToDevice else "d2h"] += 1
        return (OK,)

    m.cudaMalloc, m.cudaFree, m.cudaMemcpyAsync = malloc, free, memcpy
    m.cudaStreamCreate = lambda: (OK, FakeStream())
    m.cudaStreamSynchronize = lambda s: (OK,)
    m.cudaStreamDestroy = lambda s: (OK,)
    return m


def fits(cudart: ModuleType, ptr: int, n: int) -> bool:
    return any(base <= ptr and ptr + n <= base + len(buf) for base, buf in cudart.allocations.items())


def install(monkeypatch: Any, trt: ModuleType, cudart: ModuleType) -> None:
    """Make ``import tensorrt`` and ``from cuda.bindings import runtime`` return the fakes."""
    bindings = ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda = ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in (
        ("tensorrt", trt),
        ("cuda", cuda),
        ("cuda.bindings", bindings),
        ("cuda.bindings.runtime", cudart),
    ):
        monkeypatch.setitem(sys.modules, name, module)


# ---------------------------------------------------------------------- tensorrt


def make_tensorrt(cudart: ModuleType, version: str = "10.7.0", weak_typing: bool = True) -> ModuleType:
    """``tensorrt`` of ``version``; ``weak_typing=False`` behaves like TensorRT 11 (no BuilderFlag.FP16/BF16)."""
    m = ModuleType("tensorrt")
    m.__version__ = version
    m.builds = []  # (onnx file, flags, strongly typed) of every build, for assertions
    m.BuilderFlag = enum.Enum("BuilderFlag", ["TF32", "FP16", "BF16"] if weak_typing else ["TF32"])
    m.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})
    m.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    m.TensorIOMode = enum.Enum("TensorIOMode", ["INPUT", "OUTPUT"])
    m.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "INT32", "INT64"])
    m.float32, m.float16, m.int32, m.int64 = (
        m.DataType.FLOAT,
        m.DataType.HALF,
        m.DataType.INT32,
        m.DataType.INT64,
    )
    onnx_types = {1: m.float32, 10: m.float16, 6: m.int32, 7: m.int64}
    numpy_types = {m.float32: np.float32, m.float16: np.float16, m.int32: np.int32, m.int64: np.int64}

    class ILogger:
        Severity = enum.IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3})

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Network:
        def __init__(self, flags: int) -> None:
            self.strongly_typed = bool(flags & (1 << int(m.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            self.inputs: list[str] = []
            self.onnx = b""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> SimpleNamespace:
            return SimpleNamespace(name=self.inputs[i])

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            try:
                model = onnx.load(path)
            except Exception as exc:
                self.errors.append(f"ModelImporter: cannot parse {path}: {exc}")
                return False
            self.network.inputs = [i.name for i in model.graph.input]
            self.network.onnx = Path(path).read_bytes()
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.data = json.loads(blob) if blob else {"version": version, "entries": 0}

        def serialize(self) -> bytes:
            return json.dumps(self.data).encode()

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class Config:
        def __init__(self) -> None:
            self.flags = {m.BuilderFlag.TF32}
            self.profiles: list[Profile] = []
            self.cache: TimingCache | None = None
            self.progress_monitor: Any = None

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            assert pool is m.MemoryPoolType.WORKSPACE and size > 0

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            return TimingCache(blob)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if cache.data.get("version") != version and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            lowered = {
                m.BuilderFlag[f] for f in ("FP16", "BF16") if f in m.BuilderFlag.__members__
            } & config.flags
            if network.strongly_typed and lowered:
                self.logger.log(
                    ILogger.Severity.ERROR, "precision flags are not allowed on strongly typed networks"
                )
                return None
            (profile,) = config.profiles
            if set(profile.shapes) != set(network.inputs):
                self.logger.log(ILogger.Severity.ERROR, "profile does not cover the network inputs")
                return None
            if config.progress_monitor is not None:
                config.progress_monitor.phase_start("Building engine", None, 1)
                config.progress_monitor.phase_end("Building engine")
            config.cache.data["entries"] += 1
            flags = sorted(f.name for f in config.flags)
            m.builds.append((network.inputs, flags, network.strongly_typed))
            plan = {
                "tag": version,
                "onnx": base64.b64encode(network.onnx).decode(),
                "profile": profile.shapes,
            }
            return json.dumps(plan).encode()

    class Engine:
        def __init__(self, plan: dict) -> None:
            self.session = ort.InferenceSession(
                base64.b64decode(plan["onnx"]), providers=["CPUExecutionProvider"]
            )
            self.profile = plan["profile"]
            graph = onnx.load_from_string(base64.b64decode(plan["onnx"])).graph
            self.io = {
                v.name: (m.TensorIOMode.INPUT, onnx_types[v.type.tensor_type.elem_type]) for v in graph.input
            }
            self.io |= {
                v.name: (m.TensorIOMode.OUTPUT, onnx_types[v.type.tensor_type.elem_type])
                for v in graph.output
            }
            self.names = list(self.io)

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> Any:
            return self.io[name][0]

        def get_tensor_dtype(self, name: str) -> Any:
            return self.io[name][1]

        def get_tensor_profile_shape(self, name: str, index: int) -> list[list[int]]:
            assert index == 0
            return [list(s) for s in self.profile[name]]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            lo, _, hi = self.engine.profile[name]
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True)):
                return False
            self.shapes[name] = shape
            return True

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def _feed(self, zeros: bool) -> dict[str, np.ndarray]:
            feed = {}
            for name, (mode, dtype) in self.engine.io.items():
                if mode is m.TensorIOMode.INPUT:
                    shape, np_type = self.shapes[name], numpy_types[dtype]
                    if zeros:
                        feed[name] = np.zeros(shape, np_type)
                        continue
                    nbytes = int(np.prod(shape)) * np.dtype(np_type).itemsize
                    assert fits(cudart, self.addresses[name], nbytes), f"input {name} read out of bounds"
                    raw = (ctypes.c_char * nbytes).from_address(self.addresses[name])
                    feed[name] = np.frombuffer(raw, np_type).reshape(shape).copy()
            return feed

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if self.engine.io[name][0] is m.TensorIOMode.INPUT:
                return self.shapes[name]
            outputs = self.engine.session.run([name], self._feed(zeros=True))
            return outputs[0].shape

        def execute_async_v3(self, stream_handle: int) -> bool:
            assert isinstance(stream_handle, int)
            names = [n for n, (mode, _) in self.engine.io.items() if mode is m.TensorIOMode.OUTPUT]
            for name, out in zip(names, self.engine.session.run(names, self._feed(zeros=False)), strict=True):
                out = np.ascontiguousarray(out)
                if not fits(cudart, self.addresses[name], out.nbytes):
                    return False
                ctypes.memmove(self.addresses[name], out.ctypes.data, out.nbytes)
            return True

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            try:
                data = json.loads(plan)
            except ValueError:
                self.logger.log(
                    ILogger.Severity.ERROR, "Serialization assertion failed: magic tag does not match"
                )
                return None
            if data.get("tag") != version:
                self.logger.log(
                    ILogger.Severity.ERROR,
                    f"Serialization assertion failed: Version tag does not match ({version})",
                )
                return None
            return Engine(data)

    m.ILogger, m.IProgressMonitor, m.Builder, m.OnnxParser, m.Runtime = (
        ILogger,
        IProgressMonitor,
        Builder,
        OnnxParser,
        Runtime,
    )
    return m
