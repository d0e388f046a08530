"""cFID with the shipped judges responds to what it should: quality and variety, not only class."""

from __future__ import annotations

from latent_ddpm.evaluate.calibrate import calibration
from latent_ddpm.evaluate.classifier import Judge
from latent_ddpm.evaluate.judged import DIGITS, EMOJI
from latent_ddpm.evaluate.measure import RealReference


def _rows(data) -> dict[str, dict]:
    judge = Judge(data)
    return {r["name"]: r for r in calibration(judge, RealReference(judge), per_class=20)}


def test_real_digits_sit_at_the_floor_and_degradations_do_not() -> None:
    rows = _rows(DIGITS)
    real = rows.pop("real images (training split)")
    assert real["num_images"] == 200 and real["accuracy"] > 0.97
    assert real["cfid"] < 2 * real["cfid_floor"]
    for name, row in rows.items():
        assert row["cfid"] > 3 * real["cfid_floor"], name
    # Mode collapse keeps every digit readable: only the Fréchet distance sees the missing variety.
    collapsed = rows["collapsed: one image per class, repeated"]
    assert collapsed["accuracy"] > 0.95 and collapsed["cfid"] > 5 * real["cfid"]


def test_emoji_judge_knows_its_training_images_and_sees_noise_and_collapse() -> None:
    """The emoji judge fits its 1,591 training images far better than the held-out ones (about 99% vs 70%),
    so their features sit apart from the held-out reference: real training images score above the floor
    (docs/evaluation.md reads emoji cFIDs against that level). Noise and collapse are still far above."""
    rows = _rows(EMOJI)
    real = rows["real images (training split)"]
    assert real["num_images"] == 180 and real["accuracy"] > 0.95
    assert real["cfid_floor"] < real["cfid"] < 4 * real["cfid_floor"]
    for name in ("noisy (Gaussian, sigma 40 of 255)", "collapsed: one image per class, repeated"):
        assert rows[name]["cfid"] > 3 * real["cfid"], name
    assert rows["collapsed: one image per class, repeated"]["accuracy"] > 0.95
