"""The autoencoder's two halves around the denoising loop: latents -> pictures, pictures -> latents.

Both run in engine calls of at most ``batch_size`` images, so memory does not grow with a request's size.
``decode_each`` decodes the latents of several requests in shared calls (the engine decodes every request
that finished in a tick together) and reports NaN or Inf per request, so one overflowing request fails alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latent_ddpm.errors import NumericalError
from latent_ddpm.runtime.backends import Engine
from latent_ddpm.runtime.bundle import Bundle
from latent_ddpm.runtime.finite import check_finite
from latent_ddpm.runtime.images import from_uint8, to_uint8


class Autoencoder:
    def __init__(self, bundle: Bundle, decoder: Engine, encoder: Engine | None, batch_size: int) -> None:
        self.bundle, self.decoder, self.encoder, self.batch_size = bundle, decoder, encoder, batch_size

    def decode(self, latents: np.ndarray, what: str = "the latents") -> np.ndarray:
        """Scaled latents -> NHWC uint8 images (undoing the latent scaling as diffusers' LDMPipeline does).

        Raises NumericalError if the decoder's output holds NaN or Inf (``what`` names the latents in it).
        """
        out = self.decode_each([latents], [what])[0]
        if isinstance(out, NumericalError):
            raise out
        return out

    def decode_each(
        self, parts: Sequence[np.ndarray], whats: Sequence[str]
    ) -> list[np.ndarray | NumericalError]:
        """Each part's images, decoded in shared calls; a part whose latents or images hold NaN or Inf gets
        its NumericalError instead (the others are unaffected: the decoder works image by image)."""
        results: list[np.ndarray | NumericalError | None] = [None] * len(parts)
        unscaled: list[tuple[int, np.ndarray]] = []
        scale, shift = np.float32(self.bundle.scaling_factor), np.float32(self.bundle.shift_factor)
        for k, (latents, what) in enumerate(zip(parts, whats, strict=True)):
            with np.errstate(over="ignore", invalid="ignore"):
                x = (latents / scale + shift).astype(np.float32)
            try:
                check_finite(x, f"{what} unscaled for the decoder (/ scaling_factor + shift_factor)")
            except NumericalError as exc:
                results[k] = exc
                continue
            unscaled.append((k, x))
        if unscaled:
            joined = unscaled[0][1] if len(unscaled) == 1 else np.concatenate([x for _, x in unscaled])
            images = self._in_batches(self.decoder, joined)
            start = 0
            for k, x in unscaled:
                part = images[start : start + len(x)]
                start += len(x)
                try:
                    check_finite(part, f"the decoded images of {whats[k]} ({self.decoder.model.path.name})")
                except NumericalError as exc:
                    results[k] = exc
                    continue
                results[k] = to_uint8(part, self.bundle.value_range)
        return [r for r in results if r is not None]  # every part got its images or its error

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """NHWC uint8 pictures at model size -> scaled latent means, the starting point of img2img."""
        assert self.encoder is not None
        x = from_uint8(pixels, self.bundle.value_range)
        latents = self._in_batches(self.encoder, x).astype(np.float32)
        return check_finite(latents, f"the encoded latents ({self.encoder.model.path.name})")

    def _in_batches(self, engine: Engine, x: np.ndarray) -> np.ndarray:
        """``engine`` on ``x`` in calls of at most ``batch_size`` images; its one input and output are named
        by the bundle."""
        name, output = engine.model.main_input.name, engine.model.output.name
        if len(x) <= self.batch_size:
            return engine.run({name: x})[output]
        return np.concatenate(
            [
                engine.run({name: x[a : a + self.batch_size]})[output]
                for a in range(0, len(x), self.batch_size)
            ]
        )
