"""cFID with the shipped classifier responds to what it should: quality and variety, not only class."""

from __future__ import annotations

from latent_ddpm.evaluate.calibrate import calibration
from latent_ddpm.evaluate.classifier import DigitClassifier
from latent_ddpm.evaluate.measure import RealReference


def test_real_digits_sit_at_the_floor_and_degradations_do_not() -> None:
    classifier = DigitClassifier()
    rows = {r["name"]: r for r in calibration(classifier, RealReference(classifier), per_class=20)}
    real = rows.pop("real digits (training split)")
    assert real["num_images"] == 200 and real["accuracy"] > 0.97
    assert real["cfid"] < 2 * real["cfid_floor"]
    for name, row in rows.items():
        assert row["cfid"] > 3 * real["cfid_floor"], name
    # Mode collapse keeps every digit readable: only the Fréchet distance sees the missing variety.
    collapsed = rows["collapsed: one digit per class, repeated"]
    assert collapsed["accuracy"] > 0.95 and collapsed["cfid"] > 5 * real["cfid"]
