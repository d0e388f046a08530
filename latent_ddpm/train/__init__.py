"""Stage 1 of the pipeline: train an AutoencoderKL and a latent UNet2DModel with diffusers + Accelerate.

Read in this order: ``cli`` (the command) -> ``config`` (TOML recipes, ``configs/``) -> ``data`` (images)
-> ``vae_stage`` and ``unet_stage`` (what each stage trains and writes) -> ``loop`` (the shared optimisation
loop) with ``determinism`` (per-step seeding), ``checkpoint`` (atomic save / exact resume), ``logs``
(loss log, plots, grids), ``sampling`` (diffusers DDIM + guidance for previews) and ``output`` (the
diffusers-format run directory and ``latent_ddpm.json``).
"""
