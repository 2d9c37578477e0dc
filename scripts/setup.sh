#!/usr/bin/env bash
# Creates .venv and installs Hone with its trainer and test tools. Re-runs install only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.hone-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # Never let pip resolve torch from the index (it would pull CUDA builds): the `train`
  # extra pins torch==2.13.0, which these machines install from a local CPU wheel.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,train]'
  echo "$want" > "$stamp"
fi
