"""`latent-ddpm bench`: the runtime against the PyTorch reference on the same model, steps and latents.

Numbers come from one run of one process tree, so ratios compare like with like on a shared, noisy machine:
warm-up first, then the median (with min and max) of repeated runs, the backends interleaved run by run.
"""
