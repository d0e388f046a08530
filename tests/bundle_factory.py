"""Minimal but real bundles built with ``onnx.helper``: no torch, runs in ONNX Runtime in milliseconds.

The graphs follow docs/bundle-format.md (names, dtypes, dynamic batch) and compute simple, known functions,
so runtime tests can check the loop and the checks around it without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from latent_ddpm.runtime.bundle import sha256_file

LATENT = (4, 8, 8)
IMAGE = (1, 32, 32)
OPSET = 17
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.42.1",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def _value(name: str, dtype: int, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bundle_factory"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


# Multiplying by it twice overflows float32 (3.4e38) for any value above 3.4e-22 in magnitude.
HUGE = 1e30
# The ways a factory bundle can overflow at run time (tests of the NaN/Inf guard):
# "unet": the U-Net's output is +-Inf; "scheduler": it is finite (~3e38) but the DDIM step's x0 estimate
# divides it by sqrt(alpha_bar_t) < 1 and overflows; "decoder": the decoded image is +-Inf.
OVERFLOWS = ("unet", "scheduler", "decoder")


def _overflow(nodes: list, inits: list, output: str, prefix: str) -> None:
    """Rename the last node's output and append ``output = last * HUGE * HUGE``."""
    inits.append(numpy_helper.from_array(np.array(HUGE, np.float32), f"{prefix}_huge"))
    nodes[-1].output[0] = f"{prefix}_pre"
    nodes.append(helper.make_node("Mul", [f"{prefix}_pre", f"{prefix}_huge"], [f"{prefix}_big"]))
    nodes.append(helper.make_node("Mul", [f"{prefix}_big", f"{prefix}_huge"], [output]))


def unet_graph(
    conditional: bool, overflow: str | None = None, class_table: int | None = None
) -> onnx.GraphProto:
    """model_output = 0.1 * tanh(sample) + t / 1000 (+ label / 10): depends on every input.

    ``class_table`` looks the label term up in an embedding table of that many rows (a Gather, as diffusers'
    class embedding exports) instead of computing it, so labels beyond the table fail in ONNX Runtime.
    """
    c, h, w = LATENT
    inputs = [
        _value("sample", TensorProto.FLOAT, ["batch", c, h, w]),
        _value("timestep", TensorProto.INT64, ["batch"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(3e38 if overflow == "scheduler" else 0.1, np.float32), "k_tanh"),
        numpy_helper.from_array(np.array(1e-3, np.float32), "k_t"),
        numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "col"),
    ]
    nodes = [
        helper.make_node("Tanh", ["sample"], ["th"]),
        helper.make_node("Mul", ["th", "k_tanh"], ["a"]),
        helper.make_node("Cast", ["timestep"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["tf", "k_t"], ["ts"]),
        helper.make_node("Reshape", ["ts", "col"], ["tcol"]),
        helper.make_node("Add", ["a", "tcol"], ["b"] if conditional else ["model_output"]),
    ]
    if conditional:
        inputs.append(_value("class_labels", TensorProto.INT64, ["batch"]))
        if class_table is None:
            inits.append(numpy_helper.from_array(np.array(0.1, np.float32), "k_c"))
            nodes += [
                helper.make_node("Cast", ["class_labels"], ["cf"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["cf", "k_c"], ["cs"]),
            ]
        else:
            table = (np.arange(class_table, dtype=np.float32) / 10).reshape(-1, 1)
            inits.append(numpy_helper.from_array(table, "class_table"))
            nodes.append(helper.make_node("Gather", ["class_table", "class_labels"], ["cs"], axis=0))
        nodes += [
            helper.make_node("Reshape", ["cs", "col"], ["ccol"]),
            helper.make_node("Add", ["b", "ccol"], ["model_output"]),
        ]
    if overflow == "unet":
        _overflow(nodes, inits, "model_output", "unet")
    out = [_value("model_output", TensorProto.FLOAT, ["batch", c, h, w])]
    return helper.make_graph(nodes, "unet", inputs, out, initializer=inits)


def decoder_graph(overflow: str | None = None) -> onnx.GraphProto:
    """image = tanh(nearest-upsample x4 of the channel mean of the latent)."""
    c, h, w = LATENT
    inits = [numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales")]
    nodes = [
        helper.make_node("ReduceMean", ["latent"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Resize", ["m", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Tanh", ["up"], ["image"]),
    ]
    if overflow == "decoder":
        _overflow(nodes, inits, "image", "dec")
    return helper.make_graph(
        nodes,
        "vae_decoder",
        [_value("latent", TensorProto.FLOAT, ["batch", c, h, w])],
        [_value("image", TensorProto.FLOAT, ["batch", *IMAGE])],
        initializer=inits,
    )


def encoder_graph(scaling_factor: float) -> onnx.GraphProto:
    """latent = scaling_factor * (4x4 average pool of the image), repeated over the latent channels."""
    c, h, w = LATENT
    inits = [
        numpy_helper.from_array(np.array(scaling_factor, np.float32), "scale"),
        numpy_helper.from_array(np.array([1, c, 1, 1], np.int64), "reps"),
    ]
    nodes = [
        helper.make_node("AveragePool", ["image"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Tile", ["p", "reps"], ["t"]),
        helper.make_node("Mul", ["t", "scale"], ["latent"]),
    ]
    return helper.make_graph(
        nodes,
        "vae_encoder",
        [_value("image", TensorProto.FLOAT, ["batch", *IMAGE])],
        [_value("latent", TensorProto.FLOAT, ["batch", c, h, w])],
        initializer=inits,
    )


def _tensor(name: str, dtype: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


def make_bundle(
    root: Path,
    *,
    conditional: bool = True,
    with_encoder: bool = True,
    scaling_factor: float = 0.5,
    defaults: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    overflow: str | None = None,
    class_table: int | None = None,
) -> Path:
    """Write a complete, loadable bundle into ``root`` and return it (``overflow``: one of OVERFLOWS)."""
    assert overflow in (None, *OVERFLOWS), overflow
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    c, h, w = LATENT
    latent_t = ["batch", c, h, w]
    image_t = ["batch", *IMAGE]
    unet_inputs = [_tensor("sample", "float32", latent_t), _tensor("timestep", "int64", ["batch"])]
    if conditional:
        unet_inputs.append(_tensor("class_labels", "int64", ["batch"]))
    graphs = {
        "unet": (
            unet_graph(conditional, overflow, class_table),
            unet_inputs,
            [_tensor("model_output", "float32", latent_t)],
        ),
        "vae_decoder": (
            decoder_graph(overflow),
            [_tensor("latent", "float32", latent_t)],
            [_tensor("image", "float32", image_t)],
        ),
    }
    if with_encoder:
        graphs["vae_encoder"] = (
            encoder_graph(scaling_factor),
            [_tensor("image", "float32", image_t)],
            [_tensor("latent", "float32", latent_t)],
        )
    models = {}
    for role, (graph, inputs, outputs) in graphs.items():
        path = root / f"{role}.onnx"
        _save(graph, path)
        models[role] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "opset": OPSET,
            "precision": "fp32",
            "kept_fp32": [],
            "external_data": None,
            "inputs": inputs,
            "outputs": outputs,
        }
    meta = {
        "format": "latent-ddpm-bundle",
        "format_version": 1,
        "name": "factory",
        "created_by": "tests/bundle_factory.py",
        "models": models,
        "latent": {
            "channels": c,
            "height": h,
            "width": w,
            "scaling_factor": scaling_factor,
            "shift_factor": None,
        },
        "image": {"channels": IMAGE[0], "height": IMAGE[1], "width": IMAGE[2], "value_range": [-1.0, 1.0]},
        "prediction_type": "epsilon",
        "scheduler": dict(scheduler or SCHEDULER),
        "conditioning": {"num_classes": 10, "class_names": [str(i) for i in range(10)], "null_class": 10}
        if conditional
        else None,
        "defaults": defaults
        or {"sampler": "ddim", "steps": 10, "guidance_scale": 2.0 if conditional else 1.0, "eta": 0.0},
        "validation": {"validated": False},
    }
    (root / "bundle.json").write_text(json.dumps(meta, indent=2))
    return root


def rewrite_meta(root: Path, **changes: Any) -> None:
    """Edit bundle.json in place (tests of bad bundles)."""
    meta = json.loads((root / "bundle.json").read_text())
    meta.update(changes)
    (root / "bundle.json").write_text(json.dumps(meta, indent=2))
