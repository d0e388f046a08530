"""latent-ddpm: train a latent DDPM, export it to a validated ONNX bundle, run it anywhere.

The pipeline reads top to bottom: ``train`` -> ``export`` -> ``runtime`` -> ``demo``.
Only ``latent_ddpm.runtime`` is needed to sample from a bundle, and it never imports torch.
"""

__version__ = "0.1.0"
