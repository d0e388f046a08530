"""Per-step randomness: the data a step sees depends on (seed, step) only, never on history or process count."""

from __future__ import annotations

import numpy as np
import pytest

from latent_ddpm.train.determinism import BatchPlan, micro_generator
from latent_ddpm.train.errors import TrainError


def test_every_epoch_visits_every_sample_once():
    plan = BatchPlan(n=10, seed=0, stage="unet", batch_size=4, grad_accum=1, num_processes=1, rank=0)
    stream = np.concatenate([plan.indices(step, 0) for step in range(10)])  # 40 positions = 4 epochs
    for epoch in stream.reshape(4, 10):
        assert sorted(epoch) == list(range(10))
    assert not all((e == stream[:10]).all() for e in stream.reshape(4, 10)[1:])  # reshuffled per epoch


def test_global_batch_does_not_depend_on_process_count_or_history():
    one = BatchPlan(n=37, seed=3, stage="vae", batch_size=8, grad_accum=2, num_processes=1, rank=0)
    two = [
        BatchPlan(n=37, seed=3, stage="vae", batch_size=8, grad_accum=2, num_processes=2, rank=r)
        for r in (0, 1)
    ]
    for step in (12, 0, 5):  # any order: a resumed run jumps straight to its step
        for micro in (0, 1):
            split = np.concatenate([p.indices(step, micro) for p in two])
            assert (split == one.indices(step, micro)).all()
    other_seed = BatchPlan(n=37, seed=4, stage="vae", batch_size=8, grad_accum=2, num_processes=1, rank=0)
    assert not (other_seed.indices(5, 0) == one.indices(5, 0)).all()


def test_noise_is_a_function_of_step_micro_and_rank():
    def seed_of(step: int, micro: int, rank: int) -> int:
        return micro_generator(0, "unet", step, micro, rank).initial_seed()

    assert seed_of(7, 0, 0) == seed_of(7, 0, 0)
    assert len({seed_of(7, 0, 0), seed_of(8, 0, 0), seed_of(7, 1, 0), seed_of(7, 0, 1)}) == 4


def test_uneven_split_is_refused():
    with pytest.raises(TrainError, match="cannot be split evenly over 3 processes"):
        BatchPlan(n=10, seed=0, stage="unet", batch_size=8, grad_accum=2, num_processes=3, rank=0)
