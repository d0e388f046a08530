"""The exporter's errors: a source it cannot read, or a bundle that did not pass its gate."""

from __future__ import annotations

from typing import Any

from latent_ddpm.errors import LatentDDPMError


class ExportError(LatentDDPMError):
    """A source directory that cannot be exported, or an output directory that cannot be written."""


class GateFailedError(ExportError):
    """The exported bundle does not sample like its source; ``report`` holds every figure of the gate."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report
