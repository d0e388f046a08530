"""Stage 1 of the pipeline: train an AutoencoderKL and a latent UNet2DModel with diffusers + Accelerate."""
