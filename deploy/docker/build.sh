#!/usr/bin/env bash
# Builds Hone's three images from the repository root, tagged as the manifests and compose file name them:
#   ghcr.io/hone-dev/hone-service:0.1.0    deploy/docker/service.Dockerfile    the control plane (`hone serve`)
#   ghcr.io/hone-dev/hone-trainer:0.1.0    deploy/docker/trainer.Dockerfile    `python -m trainer` (CUDA torch)
#   ghcr.io/hone-dev/hone-inference:0.1.0  deploy/docker/inference.Dockerfile  vLLM plus Hone
#
#   deploy/docker/build.sh                         # all three
#   deploy/docker/build.sh service                 # just one
#   HONE_REGISTRY=registry.example.com/hone deploy/docker/build.sh && PUSH=1 ...   # another registry, and push
set -euo pipefail
cd "$(dirname "$0")/../.."
REGISTRY=${HONE_REGISTRY:-ghcr.io/hone-dev}
VERSION=${HONE_VERSION:-0.1.0}
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(service trainer inference)
for name in "${images[@]}"; do
  case "$name" in service|trainer|inference) ;; *) echo "build.sh: unknown image $name" >&2; exit 2 ;; esac
  tag="$REGISTRY/hone-$name:$VERSION"
  docker build -f "deploy/docker/$name.Dockerfile" -t "$tag" .
  if [ "${PUSH:-0}" = 1 ]; then docker push "$tag"; fi
done
