# syntax=docker/dockerfile:1
# latent-ddpm images. What each target holds, sizes, build and run commands: docs/docker.md.
#
#   docker build -t latent-ddpm .                            # cpu (default): the demo, no torch
#   docker build --target serve -t latent-ddpm:serve .       # the HTTP API (Ray Serve), no torch
#   docker build --target export -t latent-ddpm:export .     # torch (CPU build) + diffusers: train, export
#   docker build --target gpu -t latent-ddpm:gpu .           # demo on CUDA; TensorRT after build-engines
#
# Every target installs the same wheel, built once from this checkout; the shipped digits bundle is inside it.
# The cpu, serve and export images hold one virtual environment, /opt/venv, installed by the wheel stage's pip
# in a single RUN that mounts that pip, the wheel and pip's cache: none of them, nor the source tree, stays
# behind.

# Any Debian-like image with python3 >= 3.10 and its venv module (tests/test_docker_images.py builds on a
# Debian bookworm with python3 and python3-venv made by debootstrap).
ARG BASE_IMAGE=python:3.11-slim-bookworm
# NGC TensorRT 24.12: TensorRT 10.7, CUDA 12.6, Ubuntu 22.04, Python 3.10. Engines are tied to the TensorRT
# version, so pick the tag whose TensorRT you deploy with: --build-arg TENSORRT_TAG=...
ARG TENSORRT_TAG=24.12-py3

# ---------------------------------------------------------------- wheel: the package, built once
FROM ${BASE_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE NOTICE ./
COPY latent_ddpm ./latent_ddpm
# /opt/pip: the pip that installs the CPU images' environments, which get no pip of their own.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/pip \
    && /opt/pip/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- gpu: the demo on an NVIDIA GPU
FROM nvcr.io/nvidia/tensorrt:${TENSORRT_TAG} AS gpu
ENV PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    LATENT_DDPM_BUNDLE=/home/app/bundle
# `gpu` brings onnxruntime-gpu and nothing here pulls the CPU onnxruntime (which would shadow it: same module).
# cuda-python stays on the CUDA 12 line of this base image.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    set -- /wheels/latent_ddpm-*.whl \
    && python3 -m pip install --no-cache-dir "latent-ddpm[gpu,demo,tensorrt] @ file://$1" \
        "cuda-python>=12.6,<13" \
    && useradd --create-home --uid 10001 app
# A writable copy of the shipped bundle, for TensorRT engines. The default command runs ONNX Runtime's CUDA
# provider and needs none; the tensorrt backend only loads plans, which are built first, on the GPU and
# TensorRT that serve, into BUNDLE/engines: `latent-ddpm build-engines /home/app/bundle`, then
# `demo --host 0.0.0.0 --port 7860 --backend tensorrt` (docs/docker.md). Mount your own bundle over
# /home/app/bundle (writable, so the engines persist) or point LATENT_DDPM_BUNDLE elsewhere.
RUN python3 -c "import shutil; from latent_ddpm.runtime import shipped_bundle_path as p; shutil.copytree(p(), '/home/app/bundle')" \
    && chown -R app:app /home/app/bundle
USER 10001
WORKDIR /home/app
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:7860/', timeout=4)"]
ENTRYPOINT ["latent-ddpm"]
CMD ["demo", "--host", "0.0.0.0", "--port", "7860", "--providers", "CUDAExecutionProvider,CPUExecutionProvider"]

# ---------------------------------------------------------------- app: where every CPU image starts
# An empty /opt/venv (on PATH), the user `app` and the entrypoint. Each image then installs the wheel with its
# own extras in one RUN: one resolution per image, so no package is installed twice in two layers (a shared
# layer with onnxruntime would be: Gradio caps Pillow, and pip replaces it in the next layer).
FROM ${BASE_IMAGE} AS app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
RUN python3 -m venv --without-pip /opt/venv \
    && useradd --create-home --uid 10001 app
WORKDIR /home/app
ENTRYPOINT ["latent-ddpm"]

# ---------------------------------------------------------------- export: train, export, quantize on CPUs
FROM app AS export
# The CPU build of torch (the plain PyPI wheel pulls CUDA libraries). For CUDA training use e.g.
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 --build-arg TORCH_VERSION=2.13.0+cu126
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0+cpu
RUN --mount=type=bind,from=wheel,source=/opt/pip,target=/opt/pip \
    --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    set -- /wheels/latent_ddpm-*.whl \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --extra-index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "latent-ddpm[export,train] @ file://$1"
USER 10001
WORKDIR /work
CMD ["--help"]

# ---------------------------------------------------------------- serve: the HTTP API (Ray Serve), no torch
FROM app AS serve
RUN --mount=type=bind,from=wheel,source=/opt/pip,target=/opt/pip \
    --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    set -- /wheels/latent_ddpm-*.whl \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install "latent-ddpm[cpu,serve] @ file://$1"
USER 10001
# 8000: the API (OpenAI's images API, /v1/models, /healthz); 8080: Ray's Prometheus metrics. Ray keeps its
# object store in /dev/shm: run with --shm-size=1g (docs/serving.md).
EXPOSE 8000 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--metrics-port", "8080"]

# ---------------------------------------------------------------- cpu (default): the demo, runtime only
FROM app AS cpu
ENV GRADIO_ANALYTICS_ENABLED=False
RUN --mount=type=bind,from=wheel,source=/opt/pip,target=/opt/pip \
    --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    set -- /wheels/latent_ddpm-*.whl \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --no-compile "latent-ddpm[cpu,demo] @ file://$1"
USER 10001
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:7860/', timeout=4)"]
CMD ["demo", "--host", "0.0.0.0", "--port", "7860"]
