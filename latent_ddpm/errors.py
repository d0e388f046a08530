"""The package's exceptions, on the ground floor so that every stage can raise and catch them.

Every message names the bad value, key or file. The CLI prints any ``LatentDDPMError`` as one line on stderr
and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LatentDDPMError(Exception):
    """Base class for errors a user can act on (bad bundle, bad argument, missing extra)."""


class CLIError(LatentDDPMError):
    """A command-line flag or combination of flags that cannot work, found before any work is done."""


class BundleError(LatentDDPMError):
    """A bundle directory that is missing, malformed, corrupted or inconsistent with its ONNX graphs."""


class InputError(LatentDDPMError, ValueError):
    """An argument to the pipeline or a backend that is out of range or of the wrong shape/dtype."""


class BackendUnavailableError(LatentDDPMError):
    """The requested backend (or one of its dependencies / devices) is not installed or present."""


class NumericalError(LatentDDPMError):
    """A model produced NaN or Inf while sampling (it overflowed): no images are returned or written."""
