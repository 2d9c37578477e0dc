# syntax=docker/dockerfile:1
# The trainer: `python -m trainer --spec URL`, one per tuning job (a Kubernetes Job made from
# deploy/kubernetes/base/templates/trainer-job.yaml). CUDA runtime base plus torch's CUDA build.
#
#   docker build -f deploy/docker/trainer.Dockerfile -t ghcr.io/hone-dev/hone-trainer:0.1.0 .
#   (or deploy/docker/build.sh, which builds all three images)
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# torch is pinned by the `train` extra (torch==2.13.0); it comes from PyTorch's CUDA wheel index first, so the
# `.[train]` install below finds it satisfied and never swaps it for another build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/var/lib/hone/huggingface

# DL3008: Ubuntu's python3 is whatever noble ships; the base image tag pins the release, and pinning the
# package version would break the build at each archive update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/hone
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0
COPY hone ./hone
COPY hone_kernel ./hone_kernel
COPY service ./service
COPY inference ./inference
COPY trainer ./trainer
# xgrammar without triton (response_format's grammars on the built-in engine and in RFT sampling): the file says why
COPY scripts/structured-deps.txt ./scripts/
# DL3013: this installs the project itself; the versions come from pyproject.toml (torch==2.13.0 above).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[train]" \
    && pip install --no-cache-dir --no-deps -r scripts/structured-deps.txt \
    && groupadd --system --gid 10001 hone \
    && useradd --system --uid 10001 --gid hone --home-dir /var/lib/hone --create-home hone

USER 10001:10001
WORKDIR /var/lib/hone
ENTRYPOINT ["python", "-m", "trainer"]
