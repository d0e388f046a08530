"""The rules that turn sweep rows into a bundle's recommended defaults."""

from __future__ import annotations

from latent_ddpm.evaluate.recommend import pick_guidance, pick_steps


def _row(**kw):
    base = {
        "sampler": "ddim",
        "steps": 50,
        "guidance_scale": 1.0,
        "num_images": 1000,
        "seconds_per_image": 0.1,
    }
    return {**base, **kw}


def test_guidance_lowest_cfid_among_accurate_enough_scales() -> None:
    rows = [
        _row(guidance_scale=1.0, accuracy=0.90, cfid=1.0),  # best cFID but misses the accuracy goal
        _row(guidance_scale=2.0, accuracy=0.975, cfid=2.0),
        _row(guidance_scale=3.0, accuracy=0.99, cfid=3.0),
    ]
    assert pick_guidance(rows, 0.97)["guidance_scale"] == 2.0
    assert pick_guidance(rows, 0.80)["guidance_scale"] == 1.0  # the emoji goal: 90% is enough


def test_guidance_falls_back_to_most_accurate() -> None:
    rows = [_row(guidance_scale=g, accuracy=a, cfid=1.0) for g, a in ((1.0, 0.8), (4.0, 0.95), (6.0, 0.93))]
    assert pick_guidance(rows, 0.97)["guidance_scale"] == 4.0
    # Accuracies within noise of the best: the better cFID wins.
    rows = [
        _row(guidance_scale=4.0, accuracy=0.950, cfid=1.2),
        _row(guidance_scale=6.0, accuracy=0.955, cfid=1.5),
    ]
    assert pick_guidance(rows, 0.97)["guidance_scale"] == 4.0


def test_steps_fewest_within_tolerance_of_best_and_same_image_count() -> None:
    rows = [
        _row(steps=10, accuracy=0.99, cfid=3.0),  # too far from the best cFID
        _row(steps=20, accuracy=0.99, cfid=2.15),  # within 10% of 2.0
        _row(steps=50, accuracy=0.99, cfid=2.0),
        _row(
            sampler="ddpm", steps=1000, accuracy=1.0, cfid=0.5, num_images=200
        ),  # fewer images: not compared
    ]
    assert pick_steps(rows)["steps"] == 20


def test_steps_needs_accuracy_too() -> None:
    rows = [
        _row(sampler="dpmsolver++", steps=10, accuracy=0.95, cfid=2.0),
        _row(steps=20, accuracy=0.99, cfid=2.0),
    ]
    assert pick_steps(rows)["steps"] == 20
