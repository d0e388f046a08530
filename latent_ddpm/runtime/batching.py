"""The tick: one denoising step for every active run, their rows batched into shared U-Net calls.

This is the runtime's one sampling loop body. ``Pipeline.generate``/``img2img`` tick the runs of one request
until they finish; the ``SamplingEngine`` ticks the runs of every request it admitted, adding and removing
runs between ticks (continuous batching at the level of denoising steps, as LLM servers batch tokens).

    ┌ tick ───────────────────────────────────────────────────────────────────────────────────────┐
    │ pack active runs into calls of <= max_rows rows (one call when the engine admits by budget) │
    │ per call: each run writes its rows ([x_t; x_t], t, [null; y]) -> ONE U-Net call             │
    │           -> each run takes its rows back: guidance, scheduler step, NaN check              │
    │ decode the previews asked for at this step, together                                        │
    │ decode every run that just finished (or was born finished: img2img at strength 0), together │
    └─────────────────────────────────────────────────────────────────────────────────────────────┘

Rows at different timesteps share a call: the graph takes a timestep (and a class) per row. A run that fails
(NaN, or a U-Net call that raises even when the run is retried alone) is reported failed; the others go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from latent_ddpm.runtime.autoencoder import Autoencoder
from latent_ddpm.runtime.backends import Engine
from latent_ddpm.runtime.bundle import Bundle
from latent_ddpm.runtime.requests import SamplingRequest
from latent_ddpm.runtime.results import Timings
from latent_ddpm.runtime.sampling import SamplingRun


@dataclass(slots=True)
class TickReport:
    """What one tick did, for the driver to hand to its callers."""

    stepped: list[SamplingRun] = field(default_factory=list)  # advanced one step
    previews: list[tuple[SamplingRun, int, int, np.ndarray]] = field(
        default_factory=list
    )  # run, i, t, images
    finished: list[tuple[SamplingRun, np.ndarray]] = field(default_factory=list)  # run, images
    failed: list[tuple[SamplingRun, BaseException]] = field(default_factory=list)
    call_rows: list[int] = field(default_factory=list)  # rows of each U-Net call
    unet_s: float = 0.0  # inside U-Net calls
    step_s: float = 0.0  # the step phase: calls, guidance, scheduler steps, previews


class Batcher:
    """Active runs and the tick that advances them; not thread-safe (one driver thread owns it)."""

    def __init__(self, bundle: Bundle, unet: Engine, autoencoder: Autoencoder, max_rows: int) -> None:
        self.bundle, self.unet, self.autoencoder, self.max_rows = bundle, unet, autoencoder, max_rows
        self.active: list[SamplingRun] = []
        names = bundle.unet_inputs
        self._names = (
            names.sample.name,
            names.timestep.name,
            None if names.class_labels is None else names.class_labels.name,
        )
        self._dtypes = (
            np.dtype(names.sample.dtype),
            np.dtype(names.timestep.dtype),
            None if names.class_labels is None else np.dtype(names.class_labels.dtype),
        )
        self._output = unet.model.output.name
        self._capacity = 0
        self._buffers: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None

    @property
    def active_rows(self) -> int:
        return sum(run.rows for run in self.active)

    def start(self, request: SamplingRequest, images: slice, timings: Timings) -> SamplingRun:
        """A new active run for ``images`` of ``request`` (img2img: its pictures are encoded here)."""
        init_latents = None
        if request.pixels is not None:
            t0 = time.perf_counter()
            init_latents = self.autoencoder.encode(request.pixels[images])
            timings.encode_s += time.perf_counter() - t0
        run = SamplingRun(request, images, self.bundle, timings, self.unet.model.path.name, init_latents)
        self.active.append(run)
        return run

    def remove(self, run: SamplingRun) -> None:
        self.active.remove(run)

    def tick(self) -> TickReport:
        report = TickReport()
        t0 = time.perf_counter()
        stepping = [run for run in self.active if not run.done]
        if stepping:
            self._step(stepping, report)
        report.step_s = time.perf_counter() - t0
        for timings in _requests(stepping):
            timings.denoise_s += report.step_s
        if report.failed:
            failed = {id(run) for run, _ in report.failed}
            self.active = [run for run in self.active if id(run) not in failed]
        if any(run.done for run in self.active):
            self._finish([run for run in self.active if run.done], report)
            self.active = [run for run in self.active if not run.done]
        return report

    def _step(self, runs: list[SamplingRun], report: TickReport) -> None:
        """The step phase: U-Net calls, each run's step, and the previews asked for at this step."""
        previews: list[tuple[SamplingRun, int, int, np.ndarray]] = []
        # An overflow is reported by check_finite, naming the step, instead of NumPy's RuntimeWarnings.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for group in self._pack(runs):
                for run, output in self._call(group, report):
                    if isinstance(output, BaseException):
                        report.failed.append((run, output))
                        continue
                    i = run.step_index
                    try:
                        x0 = run.advance(output)
                    except Exception as exc:  # NaN (NumericalError) or a bug: this run alone fails
                        report.failed.append((run, exc))
                        continue
                    report.stepped.append(run)
                    if x0 is not None:
                        previews.append((run, i, int(run.timesteps[i]), x0))
        if previews:
            decoded = self.autoencoder.decode_each(
                [x0 for _, _, _, x0 in previews],
                [f"the preview at {r.step_name(i)}" for r, i, _, _ in previews],
            )
            for (run, i, t, _), images in zip(previews, decoded, strict=True):
                if isinstance(images, BaseException):
                    report.failed.append((run, images))
                else:
                    report.previews.append((run, i, t, images))

    def _finish(self, runs: list[SamplingRun], report: TickReport) -> None:
        """Decode every run that is done, together."""
        t0 = time.perf_counter()
        decoded = self.autoencoder.decode_each(
            [run.latents for run in runs], ["the final latents"] * len(runs)
        )
        decode_s = time.perf_counter() - t0
        for run, images in zip(runs, decoded, strict=True):
            if isinstance(images, BaseException):
                report.failed.append((run, images))
            else:
                report.finished.append((run, images))
        for timings in _requests(runs):
            timings.decode_s += decode_s

    # ------------------------------------------------------------------ U-Net calls

    def _pack(self, runs: list[SamplingRun]) -> list[list[SamplingRun]]:
        """Runs in order, into calls of at most ``max_rows`` rows (each run fits one call by construction)."""
        if sum(run.rows for run in runs) <= self.max_rows:  # what the engine's admission guarantees
            return [runs]
        groups: list[list[SamplingRun]] = []
        rows = self.max_rows
        for run in runs:
            if rows + run.rows > self.max_rows:
                groups.append([])
                rows = 0
            groups[-1].append(run)
            rows += run.rows
        return groups

    def _call(
        self, group: list[SamplingRun], report: TickReport
    ) -> list[tuple[SamplingRun, np.ndarray | BaseException]]:
        """One U-Net call for ``group``; each run's rows of the output. If the call raises, each run is retried
        alone, so that a run the graph cannot take fails without taking the others with it."""
        try:
            output = self._run_unet(group, report)
        except Exception as exc:  # the backend's BundleError for a graph that failed, or a bug
            if len(group) == 1:
                return [(group[0], exc)]
            return [pair for run in group for pair in self._call([run], report)]
        out: list[tuple[SamplingRun, np.ndarray | BaseException]] = []
        start = 0
        for run in group:
            out.append((run, output[start : start + run.rows]))
            start += run.rows
        return out

    def _run_unet(self, group: list[SamplingRun], report: TickReport) -> np.ndarray:
        rows = sum(run.rows for run in group)
        sample, timestep, labels = self._feed_buffers(rows)
        start = 0
        for run in group:
            stop = start + run.rows
            run.write_rows(
                sample[start:stop], timestep[start:stop], None if labels is None else labels[start:stop]
            )
            start = stop
        sample_name, timestep_name, labels_name = self._names
        feed = {sample_name: sample[:rows], timestep_name: timestep[:rows]}
        if labels is not None and labels_name is not None:
            feed[labels_name] = labels[:rows]
        u0 = time.perf_counter()
        output = self.unet.run(feed)[self._output]
        unet_s = time.perf_counter() - u0
        report.unet_s += unet_s
        report.call_rows.append(rows)
        for timings in _requests(group):
            timings.unet_s += unet_s
        return output

    def _feed_buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The call's input arrays, allocated once (grown up to ``max_rows``) and refilled at every call:
        reusing them instead of concatenating per step cut the batch-1 loop overhead (NOTES.md, item 8)."""
        if self._buffers is None or rows > self._capacity:
            self._capacity = min(max(rows, 2 * self._capacity), max(self.max_rows, rows))
            sample_dtype, timestep_dtype, labels_dtype = self._dtypes
            self._buffers = (
                np.empty((self._capacity, *self.bundle.latent_shape), sample_dtype),
                np.empty((self._capacity,), timestep_dtype),
                None if labels_dtype is None else np.zeros((self._capacity,), labels_dtype),
            )
        return self._buffers


def _requests(runs: list[SamplingRun]) -> list[Timings]:
    """Each request's Timings once, although several of its runs may take part in the same call or tick."""
    if len(runs) == 1:
        return [runs[0].timings]
    return list({id(run.timings): run.timings for run in runs}.values())
