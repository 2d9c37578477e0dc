# syntax=docker/dockerfile:1
# The control plane: `hone serve`. No training or serving libraries (no `train` extra): on Kubernetes,
# trainers and engines run in their own images (trainer.Dockerfile, inference.Dockerfile).
#
#   docker build -f deploy/docker/service.Dockerfile -t ghcr.io/hone-dev/hone-service:0.1.0 .
#   (or deploy/docker/build.sh, which builds all three images)
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HONE_HOST=0.0.0.0 \
    HONE_PORT=8000 \
    HONE_DATA_DIR=/var/lib/hone

WORKDIR /opt/hone
COPY pyproject.toml README.md ./
COPY hone ./hone
COPY hone_kernel ./hone_kernel
COPY service ./service
COPY inference ./inference
COPY trainer ./trainer
# The `server` extra: a plain install is the client side only (SDK and CLI).
# DL3013: this installs the project itself; the versions come from pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[server]" \
    && groupadd --system --gid 10001 hone \
    && useradd --system --uid 10001 --gid hone --home-dir /var/lib/hone --create-home hone

USER 10001:10001
WORKDIR /var/lib/hone
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HONE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["hone"]
CMD ["serve"]
