"""The runtime's exceptions. Every message names the bad value, key or file."""

from __future__ import annotations


class LatentDDPMError(Exception):
    """Base class for errors a user can act on (bad bundle, bad argument, missing extra)."""


class BundleError(LatentDDPMError):
    """A bundle directory that is missing, malformed, corrupted or inconsistent with its ONNX graphs."""


class InputError(LatentDDPMError, ValueError):
    """An argument to the pipeline or a backend that is out of range or of the wrong shape/dtype."""


class BackendUnavailableError(LatentDDPMError):
    """The requested backend (or one of its dependencies / devices) is not installed or present."""
