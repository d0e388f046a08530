"""Errors of `latent-ddpm train` that a user can fix: a bad recipe, override, data folder or run directory."""

from __future__ import annotations

from latent_ddpm.errors import InputError, LatentDDPMError


class TrainError(LatentDDPMError):
    """A training run that cannot start or continue (missing VAE, clashing run directory, diverged ranks)."""


class ConfigError(InputError):
    """A recipe or `--set` override with an unknown key, a value of the wrong type or out of range."""
