"""Every evaluated image has its own noise: image k is seeded seed + k, whatever the batch size.

The runtime seeds image j of a call ``seed + j``; seeding batch i with ``seed + i`` (as evaluation once did)
gave image k of batch i + 1 the noise of image k + 1 of batch i, so with 9 classes and batches of 100 the
second batch repeated the first one's images, class for class.
"""

from __future__ import annotations

import numpy as np
from bundle_factory import EMOJI_GROUPS, make_bundle

from latent_ddpm.evaluate.classifier import Judge
from latent_ddpm.evaluate.judged import EMOJI
from latent_ddpm.evaluate.measure import RealReference, Settings, evaluate
from latent_ddpm.runtime.pipeline import Pipeline


def test_images_are_all_different_and_independent_of_the_batch_size(tmp_path) -> None:
    pipe = Pipeline.from_bundle(make_bundle(tmp_path / "e", channels=3, class_names=EMOJI_GROUPS), threads=1)
    judge = Judge(EMOJI, threads=1)
    reference = RealReference(judge)
    runs = [
        evaluate(pipe, judge, reference, Settings(per_class=3, steps=2, batch=batch), progress=False).images
        for batch in (10, 27, 4)
    ]
    flat = runs[0].reshape(len(runs[0]), -1)
    assert len(np.unique(flat, axis=0)) == len(flat) == 27
    for other in runs[1:]:
        assert np.abs(other.astype(int) - runs[0]).max() <= 1  # the same images; 1/255 of batch numerics
