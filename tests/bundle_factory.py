"""Minimal but real bundles built with ``onnx.helper``: no torch, runs in ONNX Runtime in milliseconds.

The graphs follow docs/bundle-format.md (names, dtypes, dynamic batch) and compute simple, known functions,
so runtime tests can check the loop and the checks around it without training anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from latent_ddpm.runtime.bundle import sha256_file

LATENT = (4, 8, 8)
IMAGE = (1, 32, 32)
OPSET = 17
# The shipped emoji model's classes (the Unicode emoji groups of latent_ddpm/data/emoji_32.json), for RGB
# bundles that stand in for it: names with spaces and '&', as users type them on a command line.
EMOJI_GROUPS = (
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)
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
    conditional: bool,
    overflow: str | None = None,
    class_table: int | None = None,
    overflow_class: int | None = None,
) -> onnx.GraphProto:
    """model_output = 0.1 * tanh(sample) + t / 1000 (+ label / 10): depends on every input.

    ``class_table`` looks the label term up in an embedding table of that many rows (a Gather, as diffusers'
    class embedding exports) instead of computing it, so labels beyond the table fail in ONNX Runtime.
    ``overflow_class``: the rows of that class overflow to +-Inf (output * s * s, s = 1 + HUGE * [y == k]),
    every other row is computed as usual: one request of a shared batch goes bad, its neighbours do not.
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
    if overflow_class is not None:
        assert conditional
        inits += [
            numpy_helper.from_array(np.array(overflow_class, np.int64), "bad_class"),
            numpy_helper.from_array(np.array(HUGE, np.float32), "bad_huge"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ]
        nodes[-1].output[0] = "clean_output"
        nodes += [
            helper.make_node("Equal", ["class_labels", "bad_class"], ["is_bad"]),
            helper.make_node("Cast", ["is_bad"], ["bad_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["bad_f", "bad_huge"], ["bad_big"]),
            helper.make_node("Add", ["bad_big", "one"], ["bad_s"]),
            helper.make_node("Reshape", ["bad_s", "col"], ["bad_col"]),
            helper.make_node("Mul", ["clean_output", "bad_col"], ["bad_once"]),
            helper.make_node("Mul", ["bad_once", "bad_col"], ["model_output"]),
        ]
    out = [_value("model_output", TensorProto.FLOAT, ["batch", c, h, w])]
    return helper.make_graph(nodes, "unet", inputs, out, initializer=inits)


def decoder_graph(overflow: str | None = None, channels: int = 1) -> onnx.GraphProto:
    """Grey: image = tanh(nearest-upsample x4 of the channel mean of the latent). RGB: the same of latent
    channels 0, 1, 2 (a 1x1 convolution), so that the three colour channels differ."""
    c, h, w = LATENT
    inits = [numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales")]
    if channels == 1:
        nodes = [helper.make_node("ReduceMean", ["latent"], ["m"], axes=[1], keepdims=1)]
    else:
        weight = np.eye(channels, c, dtype=np.float32).reshape(channels, c, 1, 1)
        inits.append(numpy_helper.from_array(weight, "to_rgb"))
        nodes = [helper.make_node("Conv", ["latent", "to_rgb"], ["m"])]
    nodes += [
        helper.make_node("Resize", ["m", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Tanh", ["up"], ["image"]),
    ]
    if overflow == "decoder":
        _overflow(nodes, inits, "image", "dec")
    return helper.make_graph(
        nodes,
        "vae_decoder",
        [_value("latent", TensorProto.FLOAT, ["batch", c, h, w])],
        [_value("image", TensorProto.FLOAT, ["batch", channels, *IMAGE[1:]])],
        initializer=inits,
    )


def encoder_graph(scaling_factor: float, channels: int = 1) -> onnx.GraphProto:
    """latent = scaling_factor * (4x4 average pool of the image), repeated over the latent channels (grey)
    or mapped to them by a 1x1 convolution (RGB: channels 0-2 are R, G, B, channel 3 their mean)."""
    c, h, w = LATENT
    inits = [numpy_helper.from_array(np.array(scaling_factor, np.float32), "scale")]
    nodes = [helper.make_node("AveragePool", ["image"], ["p"], kernel_shape=[4, 4], strides=[4, 4])]
    if channels == 1:
        inits.append(numpy_helper.from_array(np.array([1, c, 1, 1], np.int64), "reps"))
        nodes.append(helper.make_node("Tile", ["p", "reps"], ["t"]))
    else:
        weight = np.vstack([np.eye(channels), np.full((c - channels, channels), 1 / channels)])
        inits.append(
            numpy_helper.from_array(weight.astype(np.float32).reshape(c, channels, 1, 1), "from_rgb")
        )
        nodes.append(helper.make_node("Conv", ["p", "from_rgb"], ["t"]))
    nodes.append(helper.make_node("Mul", ["t", "scale"], ["latent"]))
    return helper.make_graph(
        nodes,
        "vae_encoder",
        [_value("image", TensorProto.FLOAT, ["batch", channels, *IMAGE[1:]])],
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
    overflow_class: int | None = None,
    channels: int = 1,
    class_names: Sequence[str] | None = None,
    name: str = "factory",
    precision: str = "fp32",
) -> Path:
    """Write a complete, loadable bundle into ``root`` and return it (``overflow``: one of OVERFLOWS;
    ``overflow_class``: a class whose U-Net rows overflow; ``channels``: 1 grey or 3 RGB images;
    ``class_names``: default "0".."9"; ``precision`` "fp16": every graph converted by the exporter's own
    float16 conversion, as a shipped fp16 bundle is)."""
    assert overflow in (None, *OVERFLOWS), overflow
    assert channels in (1, 3) and precision in ("fp32", "fp16"), (channels, precision)
    names = [str(i) for i in range(10)] if class_names is None else list(class_names)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    c, h, w = LATENT
    latent_t = ["batch", c, h, w]
    image_t = ["batch", channels, *IMAGE[1:]]
    unet_inputs = [_tensor("sample", "float32", latent_t), _tensor("timestep", "int64", ["batch"])]
    if conditional:
        unet_inputs.append(_tensor("class_labels", "int64", ["batch"]))
    graphs = {
        "unet": (
            unet_graph(conditional, overflow, class_table, overflow_class),
            unet_inputs,
            [_tensor("model_output", "float32", latent_t)],
        ),
        "vae_decoder": (
            decoder_graph(overflow, channels),
            [_tensor("latent", "float32", latent_t)],
            [_tensor("image", "float32", image_t)],
        ),
    }
    if with_encoder:
        graphs["vae_encoder"] = (
            encoder_graph(scaling_factor, channels),
            [_tensor("image", "float32", image_t)],
            [_tensor("latent", "float32", latent_t)],
        )
    models = {}
    for role, (graph, inputs, outputs) in graphs.items():
        path = root / f"{role}.onnx"
        _save(graph, path)
        converted = _to_fp16(path, inputs) if precision == "fp16" else None
        models[role] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "opset": OPSET,
            "precision": converted.precision if converted else "fp32",
            "kept_fp32": converted.kept_fp32 if converted else [],
            "external_data": None,
            "inputs": inputs,
            "outputs": outputs,
        }
    meta = {
        "format": "latent-ddpm-bundle",
        "format_version": 1,
        "name": name,
        "created_by": "tests/bundle_factory.py",
        "models": models,
        "latent": {
            "channels": c,
            "height": h,
            "width": w,
            "scaling_factor": scaling_factor,
            "shift_factor": None,
        },
        "image": {"channels": channels, "height": IMAGE[1], "width": IMAGE[2], "value_range": [-1.0, 1.0]},
        "prediction_type": "epsilon",
        "scheduler": dict(scheduler or SCHEDULER),
        "conditioning": {"num_classes": len(names), "class_names": names, "null_class": len(names)}
        if conditional
        else None,
        "defaults": defaults
        or {"sampler": "ddim", "steps": 10, "guidance_scale": 2.0 if conditional else 1.0, "eta": 0.0},
        "validation": {"validated": False},
    }
    (root / "bundle.json").write_text(json.dumps(meta, indent=2))
    return root


def _to_fp16(path: Path, inputs: list[dict[str, Any]]) -> Any:
    """Convert the graph at ``path`` to float16 in place, probed on two random batches of its inputs."""
    from latent_ddpm.export.fp16 import convert_fp16

    rng = np.random.default_rng(0)
    feeds = [
        {
            t["name"]: rng.integers(0, 10, 2)
            if t["dtype"] == "int64"
            else rng.standard_normal([2, *t["shape"][1:]]).astype(np.float32)
            for t in inputs
        }
        for _ in range(2)
    ]
    return convert_fp16(path, feeds, external_threshold=1 << 30)


def rewrite_meta(root: Path, **changes: Any) -> None:
    """Edit bundle.json in place (tests of bad bundles)."""
    meta = json.loads((root / "bundle.json").read_text())
    meta.update(changes)
    (root / "bundle.json").write_text(json.dumps(meta, indent=2))
