# syntax=docker/dockerfile:1
# An inference engine: vLLM's OpenAI server image plus the Hone package, for
#   - the engine pods of HONE_ENDPOINT_BACKEND=kubernetes (deploy/kubernetes/base/templates/engine-deployment.yaml):
#     container `engine` runs `vllm serve ...`, container `fetcher` runs `python -m inference.fetcher`, which copies
#     tuned adapters from storage into the volume vLLM loads them from;
#   - the whole of one GPU host in deploy/compose.yaml: `hone serve` with the local executor and endpoint backend,
#     which start `python -m trainer` and `vllm serve` as processes on the host's GPU (hence peft).
# Hone is installed against vLLM's own torch (pinned by a constraints file), never the `train` extra's pin; the
# `server` extra brings `hone serve` and the fetcher's boto3.
#
#   docker build -f deploy/docker/inference.Dockerfile -t ghcr.io/hone-dev/hone-inference:0.1.0 .
#   (or deploy/docker/build.sh, which builds all three images)
FROM vllm/vllm-openai:v0.33.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/var/lib/hone/huggingface \
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=1

WORKDIR /opt/hone
COPY pyproject.toml README.md ./
COPY hone ./hone
COPY hone_kernel ./hone_kernel
COPY service ./service
COPY inference ./inference
COPY trainer ./trainer
RUN python3 -m pip freeze | grep -iE '^(torch|transformers|safetensors)==' > /tmp/vllm-pins.txt \
    && python3 -m pip install --no-cache-dir --constraint /tmp/vllm-pins.txt ".[server]" "peft>=0.12" \
    && rm /tmp/vllm-pins.txt \
    && if ! command -v python >/dev/null; then ln -s "$(command -v python3)" /usr/local/bin/python; fi \
    && groupadd --system --gid 10001 hone \
    && useradd --system --uid 10001 --gid hone --home-dir /var/lib/hone --create-home hone

USER 10001:10001
WORKDIR /var/lib/hone
EXPOSE 8000
# vLLM's entrypoint stays (`vllm serve`); the engine template and compose.yaml give the command they run.
