"""Scheduler options: diffusers' names and defaults, checked up front, loaded the way ``from_config`` does.

A bundle carries the ``scheduler_config.json`` of the diffusers pipeline it came from, from any of the
three schedulers. ``from_config`` keeps only the keys this scheduler knows (so ``_class_name``,
``_diffusers_version`` and other schedulers' keys are ignored, and keys listed in diffusers'
``_use_default_values`` take this scheduler's defaults, exactly as diffusers does) and then every value is
checked here, so a bad one fails at load time naming the key instead of mid-sampling. Options the NumPy
runtime does not implement fail the same way rather than sampling differently from diffusers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import numpy as np

from latent_ddpm.errors import InputError

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

_BOOLS = {
    "clip_sample",
    "set_alpha_to_one",
    "thresholding",
    "rescale_betas_zero_snr",
    "lower_order_final",
    "euler_at_final",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_lu_lambdas",
    "use_beta_sigmas",
    "use_flow_sigmas",
    "use_dynamic_shifting",
}
_POSITIVE_FLOATS = {"clip_sample_range", "sample_max_value", "flow_shift"}
_NONNEGATIVE_FLOATS = {"beta_start", "beta_end"}
# Published models train with 1000 (a few with 4000) timesteps; every schedule array holds one float per
# timestep, so a hand-edited 10**9 would allocate gigabytes at load. 100000 leaves room for any real schedule.
MAX_TRAIN_TIMESTEPS = 100_000
_INT_RANGES = {"num_train_timesteps": (1, MAX_TRAIN_TIMESTEPS), "steps_offset": (0, MAX_TRAIN_TIMESTEPS)}


def _check(scheduler: str, key: str, value: Any, choices: Mapping[str, tuple]) -> Any:
    """Return ``value`` normalised (tuples for lists, float for ints) or raise InputError naming it."""

    def bad(expected: str) -> InputError:
        return InputError(f"{scheduler}: scheduler config {key}={value!r} is invalid, expected {expected}")

    if key in choices:
        if value not in choices[key]:
            raise bad("one of " + ", ".join(repr(c) for c in choices[key]))
        return value
    if key in _BOOLS:
        if not isinstance(value, bool | np.bool_):
            raise bad("true or false")
        return bool(value)
    if key in _INT_RANGES:
        low, high = _INT_RANGES[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
            raise bad(f"an integer in {low}..{high}")
        return int(value)
    if key in _POSITIVE_FLOATS:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
            raise bad("a finite number > 0")
        return float(value)
    if key in _NONNEGATIVE_FLOATS:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
            raise bad("a finite number >= 0")
        return float(value)
    if key == "beta_schedule":  # checked against the scheduler's schedules when trained_betas is unset
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if key == "dynamic_thresholding_ratio":
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise bad("a number in [0, 1]")
        return float(value)
    if key == "lambda_min_clipped":
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not -math.inf <= value < math.inf
        ):
            raise bad("a number (or -inf)")
        return float(value)
    if key == "trained_betas":
        if value is None:
            return None
        betas = np.asarray(value, dtype=object)
        if betas.ndim != 1 or not all(isinstance(b, numbers.Real) and 0 <= b <= 1 for b in betas):
            raise InputError(f"{scheduler}: trained_betas must be a flat list of numbers in [0, 1]")
        return tuple(float(b) for b in betas)
    raise AssertionError(f"no check for option {key}")  # every key in DEFAULTS has one above


_Scheduler = TypeVar("_Scheduler", bound="SchedulerBase")


class SchedulerBase:
    """Options, ``from_config`` and the diffusers attributes every scheduler shares.

    ``self.config`` is a read-only mapping of every option with diffusers' key names, read by item:
    ``sched.config["prediction_type"]``. ``dict(sched.config)`` is a valid diffusers scheduler config.
    """

    # diffusers' __init__ signature of the scheduler: every option and its default, in order
    DEFAULTS: ClassVar[Mapping[str, Any]]
    # allowed values of the choice options
    CHOICES: ClassVar[Mapping[str, tuple]]
    # option values diffusers accepts but the runtime refuses rather than sample differently: the reason
    REFUSED: ClassVar[Mapping[tuple[str, Any], str]] = MappingProxyType({})
    # beta_schedule values this scheduler implements (diffusers only reads it when trained_betas is unset)
    BETA_SCHEDULES: ClassVar[tuple[str, ...]] = BETA_SCHEDULES
    order = 1  # model evaluations per step(), as diffusers' ``order`` (1 for all three)
    init_noise_sigma = 1.0  # std of the initial noise x_T ~ N(0, I)

    def __init__(self, **options: Any) -> None:
        name = type(self).__name__
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            raise InputError(f"{name} has no option(s) {', '.join(unknown)}")
        for (key, value), why in self.REFUSED.items():
            if options.get(key, self.DEFAULTS[key]) == value:
                raise InputError(f"{name}: {key}={value!r} is not supported by the NumPy runtime: {why}")
        resolved = {
            key: _check(name, key, options.get(key, default), self.CHOICES)
            for key, default in self.DEFAULTS.items()
        }
        betas = resolved["trained_betas"]
        if betas is not None and len(betas) != resolved["num_train_timesteps"]:
            raise InputError(
                f"{name}: trained_betas has {len(betas)} values but num_train_timesteps="
                f"{resolved['num_train_timesteps']}"
            )
        if betas is None and resolved["beta_schedule"] not in self.BETA_SCHEDULES:
            allowed = ", ".join(repr(c) for c in self.BETA_SCHEDULES)
            raise InputError(
                f"{name}: scheduler config beta_schedule={resolved['beta_schedule']!r} is invalid, "
                f"expected one of {allowed}"
            )
        self.config: Mapping[str, Any] = MappingProxyType(resolved)

    @classmethod
    def from_config(cls: type[_Scheduler], config: Mapping[str, Any], **overrides: Any) -> _Scheduler:
        """Build from a diffusers scheduler config of any of the three schedulers, like diffusers' ``from_config``.

        Keys this scheduler does not have are ignored; ``overrides`` (which must be options of this
        scheduler) replace config values, e.g. ``DPMSolverMultistepScheduler.from_config(cfg, solver_order=2)``.
        """
        if not isinstance(config, Mapping):
            raise InputError(
                f"scheduler config must be a mapping (a parsed scheduler_config.json), got {config!r}"
            )
        used_defaults = config.get("_use_default_values", ())
        if not isinstance(used_defaults, list | tuple) or not all(isinstance(k, str) for k in used_defaults):
            raise InputError(
                f"scheduler config _use_default_values must be a list of keys, got {used_defaults!r}"
            )
        used_defaults = set(used_defaults)
        options = {k: v for k, v in config.items() if k in cls.DEFAULTS and k not in used_defaults}
        unknown = sorted(set(overrides) - set(cls.DEFAULTS))
        if unknown:
            raise InputError(f"{cls.__name__} has no option(s) {', '.join(unknown)}")
        options.update(overrides)
        return cls(**options)

    def scale_model_input(self, sample: np.ndarray, timestep: int | None = None) -> np.ndarray:
        """Identity: these schedulers feed x_t to the model unscaled (kept for diffusers API parity)."""
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.config)})"
