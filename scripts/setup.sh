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
# promtool and prometheus (Debian's package) check and run deploy/prometheus in the tests. Installed only when
# missing, and only where we are root (as CI is) or sudo needs no password; otherwise say what to install.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    as_root=(false)
  fi
  apt_install() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      >/dev/null 2>&1
  }
  if ! { apt_install || { "${as_root[@]}" apt-get update -qq >/dev/null 2>&1 && apt_install; }; }; then
    echo "setup: promtool is missing and could not be installed: apt-get install prometheus (as root)" >&2
  fi
fi
