#!/usr/bin/env bash
# Creates .venv and installs Hone with its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Never let pip resolve torch from the index (it would pull CUDA builds): the `train`
# extra pins torch==2.13.0, which these machines install from a local CPU wheel.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
