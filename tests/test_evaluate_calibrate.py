"""cFID with the shipped judges responds to what it should: quality and variety, not only class."""

from __future__ import annotations

import pytest

from latent_ddpm.evaluate.calibrate import calibration
from latent_ddpm.evaluate.classifier import Judge
from latent_ddpm.evaluate.judged import JUDGED
from latent_ddpm.evaluate.measure import RealReference

# per judge: the least accuracy on real training images, and how far above the floor degradations must land
BARS = {"digits": (0.97, 3.0), "emoji": (0.9, 1.5)}


@pytest.mark.parametrize("data", JUDGED, ids=lambda d: d.name)
def test_real_images_sit_at_the_floor_and_degradations_do_not(data) -> None:
    judge = Judge(data)
    rows = {r["name"]: r for r in calibration(judge, RealReference(judge), per_class=20)}
    real = rows.pop("real images (training split)")
    accuracy, above = BARS[data.name]
    assert real["num_images"] == 20 * data.num_classes and real["accuracy"] > accuracy
    assert real["cfid"] < 2 * real["cfid_floor"]
    for name, row in rows.items():
        assert row["cfid"] > above * real["cfid_floor"], name
    # Mode collapse keeps every image readable: only the Fréchet distance sees the missing variety.
    collapsed = rows["collapsed: one image per class, repeated"]
    assert collapsed["accuracy"] > accuracy - 0.05 and collapsed["cfid"] > 5 * real["cfid"]
