"""Randomness as a pure function of (seed, stage, step): what makes `--resume` exact.

Every draw in a training step (which images, diffusion noise, timesteps, label drop-out, posterior
samples, drop-out masks) comes from generators seeded by the step number, never from a stream that
runs across steps. A run resumed at step k therefore sees exactly the data and noise the uninterrupted
run saw from step k on, on any number of processes, without replaying anything.
"""

from __future__ import annotations

import numpy as np
import torch

from latent_ddpm.train.errors import TrainError

STAGE_TAGS = {"vae": 1, "unet": 2}
_EPOCH, _INIT, _STEP, _MICRO = 11, 12, 13, 14


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of small integers (SeedSequence hashing)."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1
    )


def init_seed(seed: int, stage: str) -> int:
    """Seed for a stage's weight initialisation (the same on every process)."""
    return derive_seed(seed, STAGE_TAGS[stage], _INIT)


def seed_step(seed: int, stage: str, step: int, rank: int) -> None:
    """Re-seed torch's global RNG (drop-out, anything implicit) for this step on this process."""
    torch.manual_seed(derive_seed(seed, STAGE_TAGS[stage], _STEP, step, rank))


def micro_generator(seed: int, stage: str, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator every explicit draw of one micro-batch on one process comes from."""
    return torch.Generator().manual_seed(derive_seed(seed, STAGE_TAGS[stage], _MICRO, step, micro, rank))


class BatchPlan:
    """Which samples each process sees in each micro-batch of each step.

    The data is read as an endless stream of epochs, each a seeded permutation of the whole set. One
    optimizer step consumes `batch_size` positions of that stream in `grad_accum` micro-batches, each
    split evenly over the processes, so the global batch (and the data order) does not depend on how
    many processes share it.
    """

    def __init__(
        self, n: int, seed: int, stage: str, batch_size: int, grad_accum: int, num_processes: int, rank: int
    ):
        micro = batch_size // grad_accum
        if micro % num_processes:
            raise TrainError(
                f"{stage}.batch_size / {stage}.grad_accum = {micro} images per micro-batch cannot be split "
                f"evenly over {num_processes} processes; pick a batch size divisible by {grad_accum * num_processes}"
            )
        self.n, self.seed, self.tag = n, seed, STAGE_TAGS[stage]
        self.grad_accum, self.micro, self.per_rank, self.rank = (
            grad_accum,
            micro,
            micro // num_processes,
            rank,
        )
        self._perms: dict[int, np.ndarray] = {}

    def indices(self, step: int, micro: int) -> np.ndarray:
        start = (step * self.grad_accum + micro) * self.micro + self.rank * self.per_rank
        positions = np.arange(start, start + self.per_rank)
        epochs, offsets = np.divmod(positions, self.n)
        return np.array([self._perm(int(e))[o] for e, o in zip(epochs, offsets, strict=True)], dtype=np.int64)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng(derive_seed(self.seed, self.tag, _EPOCH, epoch))
            self._perms[epoch] = rng.permutation(self.n)
        return self._perms[epoch]
