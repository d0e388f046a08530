"""Stage 4 of the pipeline: a Gradio app that serves the torch-free runtime."""
