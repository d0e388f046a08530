"""Checks that need a loaded engine, run once when a Pipeline is built (``load_bundle`` checks the rest).

bundle.json's ``conditioning.num_classes`` and ``null_class`` say which labels the U-Net accepts, but only
the graph's class-embedding table knows; a bundle.json that claims more classes than the table has loaded
fine and then failed every guided request with ONNX Runtime's "Gather ... indices element out of data
bounds". One U-Net call at batch 1 with the highest label the pipeline will ever feed finds that out through
the same ``Engine.run`` every backend implements (no ONNX parsing, so it works for TensorRT engines too).
"""

from __future__ import annotations

import numpy as np

from latent_ddpm.errors import BundleError, InputError, LatentDDPMError
from latent_ddpm.runtime.backends import Engine
from latent_ddpm.runtime.bundle import BUNDLE_FILE, Bundle


def check_class_table(bundle: Bundle, unet: Engine, timestep_dtype: np.dtype) -> None:
    """Run the U-Net once on the highest label of bundle.json; BundleError if the graph cannot take it."""
    cond = bundle.conditioning
    if cond is None or "class_labels" not in {spec.name for spec in unet.model.inputs}:
        return
    highest = cond.null_class if cond.null_class is not None else cond.num_classes - 1
    feed = {
        "sample": np.zeros((1, *bundle.latent_shape), np.float32),
        "timestep": np.zeros((1,), timestep_dtype),
        "class_labels": np.array([highest], np.dtype(unet.model.input("class_labels").dtype)),
    }
    try:
        unet.run(feed)
    except InputError:  # the engine takes no batch of 1 (a TensorRT profile from 2 up): nothing to learn
        return
    except LatentDDPMError as exc:
        what = f"null_class {highest}" if highest == cond.null_class else f"class {highest}"
        raise BundleError(
            f"{BUNDLE_FILE}: conditioning declares {cond.num_classes} classes"
            f"{'' if cond.null_class is None else f' and null_class {cond.null_class}'}, but "
            f"{unet.model.path.name} cannot embed {what} (is num_classes wrong?): {exc}"
        ) from None
