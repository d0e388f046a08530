"""Stage 2 of the pipeline: a diffusers-format latent DDPM -> a validated ONNX bundle (and TensorRT engines)."""
