"""float32 graph -> float16 graph that never returns NaN: overflowing operators stay in float32.

fp16 U-Nets and VAEs overflow in the wild (activations past 65504 -> Inf -> NaN -> black images). We find
the operators that would, on the validation inputs, in two passes:

1. run the float32 graph with every intermediate tensor exposed and keep in float32 each operator that
   reads or writes values above ``SAFE_PEAK`` (a 4x margin under the float16 maximum);
2. convert (ONNX Runtime's float16 converter, float32 inputs and outputs kept), run the float16 graph the
   same way, and keep in float32 the first operator whose output turns NaN/Inf while its inputs are finite
   (overflow inside a kernel, e.g. a reduction); repeat until the outputs are finite.

If that does not converge in ``MAX_ROUNDS`` rounds the whole graph stays float32. Each decision is recorded
as a ``kept_fp32`` line for bundle.json.

Overflow is judged per tensor, as its float16 value: what a GPU stores between operators. Exposing every
tensor matters on CPU, where ONNX Runtime runs float16 operators that lack CPU kernels (Conv, ...) in float32
and keeps float32 between them, so a graph's final output can look fine while its float16 tensors are Inf.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from latent_ddpm.export.onnx_export import check_model, save_model

FP16_MAX = 65504.0
SAFE_PEAK = FP16_MAX / 4
MAX_ROUNDS = 8
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


@dataclass
class Fp16Result:
    precision: str  # "fp16": every operator converted | "mixed": some kept float32 | "fp32": none converted
    kept_fp32: list[str] = field(default_factory=list)
    rounds: int = 0
    external_data: str | None = None


def convert_fp16(
    path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    external_threshold: int,
    fp32_scopes: Mapping[str, str] | None = None,
) -> Fp16Result:
    """Convert the float32 graph at ``path`` to float16 in place (or leave it float32, saying why).

    ``fp32_scopes`` maps node-name prefixes to the reason their operators always stay float32.
    """
    work = path.parent / f".{path.stem}.fp16-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        source = work / "fp32.onnx"
        shutil.copyfile(path, source)
        data = path.with_name(path.name + ".data")
        if data.exists():  # external data locations are relative: the copy keeps its name
            shutil.copyfile(data, work / data.name)
        nodes = _name_nodes(source)
        scoped = {n.name: p for n in nodes for p in fp32_scopes or {} if n.name.startswith(p)}
        peaks, _ = _probe(source, feeds)
        peaks.update(_initializer_peaks(source))
        reasons: dict[str, str] = {}
        for node in nodes:
            peak = max((peaks.get(t, 0.0) for t in [*node.input, *node.output]), default=0.0)
            if peak > SAFE_PEAK and node.name not in scoped:
                reasons[node.name] = (
                    f"{node.name} ({node.op_type}): float32 values up to {peak:.3g} (fp16 max 65504)"
                )
        candidate = work / "fp16.onnx"
        for rounds in range(1, MAX_ROUNDS + 1):
            _convert(source, candidate, set(reasons) | set(scoped), external_threshold)
            _, nonfinite = _probe(candidate, feeds)
            if not nonfinite:
                kept = _kept_lines(nodes, scoped, fp32_scopes or {}, reasons)
                external = save_model(_load(candidate), path, external_threshold)
                return Fp16Result("mixed" if kept else "fp16", kept, rounds, external)
            culprits = _first_nonfinite(candidate, nonfinite, nodes)
            if not culprits:
                break
            for node in culprits:
                reasons[node.name] = (
                    f"{node.name} ({node.op_type}): NaN/Inf in float16 on the validation inputs"
                )
        why = f"whole graph: float16 still returned NaN/Inf after keeping {len(reasons)} operators in float32"
        return Fp16Result("fp32", [why], rounds, data.name if data.exists() else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _kept_lines(
    nodes: list[onnx.NodeProto], scoped: dict[str, str], scopes: Mapping[str, str], reasons: dict[str, str]
) -> list[str]:
    """bundle.json's kept_fp32: one line per fixed scope, then one per operator kept for its values."""
    lines = [
        f"{prefix}* ({list(scoped.values()).count(prefix)} operators): {why}"
        for prefix, why in scopes.items()
        if prefix in scoped.values()
    ]
    order = {n.name: i for i, n in enumerate(nodes)}
    return lines + [reasons[name] for name in sorted(reasons, key=order.__getitem__)]


def _convert(source: Path, out: Path, blocked: set[str], threshold: int) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        _load(source, inferred=True),
        keep_io_types=True,
        disable_shape_infer=True,
        node_block_list=sorted(blocked),
    )
    _drop_roundtrips(model)
    _toposort(model.graph)  # the converter appends its Cast nodes at the end; onnx.checker wants order
    save_model(model, out, threshold)
    check_model(out)


def _load(path: Path, inferred: bool = False) -> onnx.ModelProto:
    """Load with weights; shape inference runs before the weights are attached, so it works past 2 GB."""
    model = onnx.load(str(path), load_external_data=False)
    if inferred:
        model = onnx.shape_inference.infer_shapes(model)
    onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    return model


def _name_nodes(path: Path) -> list[onnx.NodeProto]:
    """Give every node a unique name (block lists go by name) and return the nodes in graph order."""
    model = onnx.load(str(path), load_external_data=False)
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    onnx.save_model(model, str(path))
    return list(model.graph.node)


def _initializer_peaks(path: Path) -> dict[str, float]:
    model = _load(path)
    return {
        t.name: float(np.abs(onnx.numpy_helper.to_array(t)).max(initial=0.0))
        for t in model.graph.initializer
        if t.data_type == TensorProto.FLOAT
    }


def _probe(path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> tuple[dict[str, float], set[str]]:
    """Run with every float tensor exposed: (largest finite |value| per tensor, tensors holding NaN/Inf)."""
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    present = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in present and types.get(name) in _FLOATS:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
                present.add(name)
    probe = path.with_name(f".probe-{path.name}")
    onnx.save_model(model, str(probe))  # weights stay in the original's external data file, if any
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        peaks: dict[str, float] = {}
        nonfinite: set[str] = set()
        for feed in feeds:
            values = dict(zip(names, session.run(names, feed), strict=True))
            values.update({k: v for k, v in feed.items() if v.dtype.kind == "f"})
            for name, value in values.items():
                value = np.asarray(value, dtype=np.float32)
                finite = np.isfinite(value)
                if not finite.all():
                    nonfinite.add(name)
                if finite.any():
                    peaks[name] = max(peaks.get(name, 0.0), float(np.abs(value[finite]).max()))
        return peaks, nonfinite
    finally:
        probe.unlink(missing_ok=True)


def _first_nonfinite(
    path: Path, nonfinite: set[str], originals: list[onnx.NodeProto]
) -> list[onnx.NodeProto]:
    """The operators to keep in float32 next: the first one whose output turns NaN/Inf from finite inputs.

    If that is a Cast the converter inserted (a float32 value too large for float16 on its way back), its
    consumers are kept in float32 instead, so the large value never crosses into float16.
    """
    by_name = {n.name: n for n in originals}
    graph = onnx.load(str(path), load_external_data=False).graph
    for node in graph.node:
        if any(o in nonfinite for o in node.output) and not any(i in nonfinite for i in node.input):
            if node.name in by_name:
                return [by_name[node.name]]
            outputs = set(node.output)
            return [by_name[n.name] for n in graph.node if outputs & set(n.input) and n.name in by_name]
    return []


def _drop_roundtrips(model: onnx.ModelProto) -> None:
    """Connect float32 operators directly: remove the float32 -> float16 -> float32 Cast pairs between them.

    The converter casts every kept operator's output to float16, even when the next operator is kept too;
    a value above 65504 would become Inf on that detour, which is exactly what keeping it was meant to stop.
    """
    graph = model.graph
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in onnx.shape_inference.infer_shapes(model).graph.value_info
    }
    types.update({t.name: t.type.tensor_type.elem_type for t in graph.input})
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        first = producer.get(node.input[0]) if node.op_type == "Cast" else None
        if (
            first is not None
            and first.op_type == "Cast"
            and _cast_to(node) == TensorProto.FLOAT
            and _cast_to(first) == TensorProto.FLOAT16
            and types.get(first.input[0]) == TensorProto.FLOAT
            and node.output[0] not in outputs
        ):
            rename[node.output[0]] = first.input[0]
    if not rename:
        return
    kept = [n for n in graph.node if n.output[0] not in rename]
    for node in kept:
        node.input[:] = [rename.get(i, i) for i in node.input]
    used = {i for n in kept for i in n.input} | outputs
    keep = [n for n in kept if n.op_type != "Cast" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _toposort(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an undefined input after float16 conversion")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)
